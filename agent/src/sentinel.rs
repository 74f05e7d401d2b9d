//! Sentinel: finding the group that watches our server, and keeping it from failing over
//! while a restore has the server stopped.
//!
//! A Sentinel group promotes a replica once the primary has not answered for
//! `down-after-milliseconds`; the restored primary then comes back as a replica of the new
//! one and full-syncs from it, which discards the restore. So before the caller stops the
//! server, the restore raises `down-after-milliseconds` on *every* Sentinel of the master
//! (each one counts towards the quorum), and puts each one's previous value back
//! afterwards. The previous values are written to the state directory first
//! ([`SuppressionRecord`]), so an agent killed in between still puts them back when it
//! starts again.
//!
//! The group is found through the one configured Sentinel (`valkey.sentinel`): the master
//! whose `runid` is our server's `run_id` (or, failing that, whose address is ours) in
//! `SENTINEL MASTERS`, then its peers from `SENTINEL SENTINELS <name>`. Every Sentinel is
//! logged in to with the configured credentials (one ACL user on all of them, as
//! Canonical's charm sets them up).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::SentinelSettings;
use crate::connection::{Connection, NativeClient, MAX_INFO_REPLY, MAX_SMALL_REPLY};
use crate::resp::Reply;
use crate::valkey::ValkeyError;

/// What every Sentinel is set to while a restore has the server stopped: a day, as
/// Canonical's own restore does. Longer than any restore's stop, short enough that a
/// value nobody put back (every safeguard failed) does not disable failover forever.
pub const SUPPRESSED_DOWN_AFTER_MS: u64 = 86_400_000;

/// The state-directory file holding the values to put back (no secrets: addresses,
/// master name and numbers only).
const RECORD_FILE: &str = "sentinel-suppression.json";

/// Why a Sentinel could not be asked or set. Messages never hold a credential.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SentinelError {
    /// Connecting or logging in to a Sentinel failed.
    #[error("Sentinel {addr}: {source}")]
    Connect { addr: String, source: ValkeyError },
    /// A Sentinel refused or did not understand a `SENTINEL` command.
    #[error("Sentinel {addr} refused {command}: {detail}")]
    Command {
        addr: String,
        command: String,
        detail: String,
    },
    /// No master of the configured Sentinel is our server.
    #[error("Sentinel {addr} watches no master at {server} (it watches: {watched}); check valkey.sentinel, or restore with sentinel ignore")]
    NotWatched {
        addr: String,
        server: String,
        watched: String,
    },
    /// A Sentinel is already at (or above) the suppressed value: another restore (this
    /// agent's lost record, or Canonical's own restore) is suppressing failover, and its
    /// value must not be recorded as the one to put back.
    #[error("Sentinel {addr} has down-after-milliseconds {ms} already: another restore is suppressing Sentinel; wait for it to end (or set the value back by hand), then restore again")]
    AlreadySuppressed { addr: String, ms: u64 },
    /// The previous values could not be recorded, so they could not be put back safely.
    #[error("cannot record the Sentinel settings to put back: {0}")]
    Record(String),
}

/// One master as `SENTINEL MASTERS` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterEntry {
    pub name: String,
    pub ip: String,
    pub port: u16,
    pub run_id: Option<String>,
    pub down_after_ms: Option<u64>,
    /// How many other Sentinels this one knows for the master.
    pub num_other_sentinels: Option<u32>,
}

/// A Sentinel's address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SentinelAddr {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for SentinelAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The flat `[key, value, key, value…]` arrays Sentinel answers with (RESP2), as a map.
pub fn fields(reply: &Reply) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Reply::Array(Some(items)) = reply {
        let mut it = items.iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            if let (Some(k), Some(v)) = (k.as_text(), v.as_text()) {
                out.insert(k, v);
            }
        }
    }
    out
}

/// The entries of a list answer (`SENTINEL MASTERS`, `SENTINEL SENTINELS`), each as its
/// fields; anything but an array is no entries.
fn entries(reply: &Reply) -> impl Iterator<Item = BTreeMap<String, String>> + '_ {
    let items: &[Reply] = match reply {
        Reply::Array(Some(items)) => items,
        _ => &[],
    };
    items.iter().map(fields)
}

/// `SENTINEL MASTERS`' answer, parsed.
pub fn parse_masters(reply: &Reply) -> Vec<MasterEntry> {
    entries(reply)
        .filter_map(|f| {
            Some(MasterEntry {
                name: f.get("name")?.clone(),
                ip: f.get("ip")?.clone(),
                port: f.get("port")?.parse().ok()?,
                run_id: f.get("runid").filter(|r| !r.is_empty()).cloned(),
                down_after_ms: f
                    .get("down-after-milliseconds")
                    .and_then(|v| v.parse().ok()),
                num_other_sentinels: f.get("num-other-sentinels").and_then(|v| v.parse().ok()),
            })
        })
        .collect()
}

/// `SENTINEL SENTINELS <name>`' answer: the peers' addresses.
pub fn parse_peers(reply: &Reply) -> Vec<SentinelAddr> {
    entries(reply)
        .filter_map(|f| {
            Some(SentinelAddr {
                host: f.get("ip")?.clone(),
                port: f.get("port")?.parse().ok()?,
            })
        })
        .collect()
}

/// The test of [`Sentinels::sees_master_up`] on one `SENTINEL MASTER` answer.
pub fn master_fresh(f: &BTreeMap<String, String>, down_after_ms: u64) -> bool {
    let flags = f.get("flags").map(String::as_str).unwrap_or("");
    let bad = flags
        .split(',')
        .any(|fl| matches!(fl, "s_down" | "o_down" | "disconnected"));
    let last_ok = f
        .get("last-ok-ping-reply")
        .and_then(|v| v.parse::<u64>().ok());
    !bad && last_ok.is_some_and(|ms| ms < (down_after_ms / 2).max(100))
}

/// Our server among `masters`: the one with its `run_id` (robust to TLS ports, host
/// names and NAT), else the one at one of `ips` on `port`.
pub fn find_master<'a>(
    masters: &'a [MasterEntry],
    run_id: Option<&str>,
    ips: &[String],
    port: u16,
) -> Option<&'a MasterEntry> {
    if let Some(id) = run_id.filter(|r| !r.is_empty()) {
        if let Some(m) = masters.iter().find(|m| m.run_id.as_deref() == Some(id)) {
            return Some(m);
        }
    }
    masters
        .iter()
        .find(|m| m.port == port && ips.iter().any(|ip| ip == &m.ip))
}

/// The group of one master: its name and every Sentinel that watches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub master_name: String,
    /// The master's address as Sentinel knows it (`ip`, `port`): a later answer naming
    /// another address means Sentinel failed over.
    pub master_ip: String,
    pub master_port: u16,
    /// The configured Sentinel first, then its peers.
    pub sentinels: Vec<SentinelAddr>,
}

/// Talks to the configured Sentinel and its peers.
#[derive(Debug, Clone)]
pub struct Sentinels {
    settings: SentinelSettings,
}

impl Sentinels {
    pub fn new(settings: SentinelSettings) -> Self {
        Sentinels { settings }
    }

    /// The configured Sentinel's address.
    pub fn configured(&self) -> SentinelAddr {
        SentinelAddr {
            host: self.settings.host.clone(),
            port: self.settings.port,
        }
    }

    async fn connect(&self, at: &SentinelAddr) -> Result<Connection, SentinelError> {
        NativeClient::new(self.settings.client_settings(&at.host, at.port))
            .connect()
            .await
            .map_err(|source| SentinelError::Connect {
                addr: at.to_string(),
                source,
            })
    }

    async fn call(
        &self,
        conn: &mut Connection,
        at: &SentinelAddr,
        args: &[&str],
        max: usize,
    ) -> Result<Reply, SentinelError> {
        let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        conn.call(&bytes, max).await.map_err(|e| match e {
            ValkeyError::Unreachable { .. } | ValkeyError::Auth { .. } => SentinelError::Connect {
                addr: at.to_string(),
                source: e,
            },
            other => SentinelError::Command {
                addr: at.to_string(),
                command: args[..args.len().min(2)].join(" "),
                detail: other.to_string(),
            },
        })
    }

    /// Finds the group watching the server with `run_id` at one of `ips` on `port`.
    pub async fn group_of(
        &self,
        run_id: Option<&str>,
        ips: &[String],
        port: u16,
    ) -> Result<Group, SentinelError> {
        let at = self.configured();
        let mut conn = self.connect(&at).await?;
        let reply = self
            .call(&mut conn, &at, &["SENTINEL", "MASTERS"], MAX_INFO_REPLY)
            .await?;
        let masters = parse_masters(&reply);
        let Some(master) = find_master(&masters, run_id, ips, port) else {
            let watched = masters
                .iter()
                .map(|m| format!("{} at {}:{}", m.name, m.ip, m.port))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(SentinelError::NotWatched {
                addr: at.to_string(),
                server: format!("{}:{port}", ips.first().map(String::as_str).unwrap_or("?")),
                watched: if watched.is_empty() {
                    "nothing".into()
                } else {
                    watched
                },
            });
        };
        let reply = self
            .call(
                &mut conn,
                &at,
                &["SENTINEL", "SENTINELS", &master.name],
                MAX_INFO_REPLY,
            )
            .await?;
        let mut sentinels = vec![at];
        for peer in parse_peers(&reply) {
            if !sentinels.contains(&peer) {
                sentinels.push(peer);
            }
        }
        Ok(Group {
            master_name: master.name.clone(),
            master_ip: master.ip.clone(),
            master_port: master.port,
            sentinels,
        })
    }

    /// One Sentinel's `down-after-milliseconds` for `master`.
    pub async fn down_after(&self, at: &SentinelAddr, master: &str) -> Result<u64, SentinelError> {
        let mut conn = self.connect(at).await?;
        let reply = self
            .call(
                &mut conn,
                at,
                &["SENTINEL", "MASTER", master],
                MAX_SMALL_REPLY,
            )
            .await?;
        fields(&reply)
            .get("down-after-milliseconds")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| SentinelError::Command {
                addr: at.to_string(),
                command: "SENTINEL MASTER".into(),
                detail: "the answer has no down-after-milliseconds".into(),
            })
    }

    /// Which address the Sentinel at `at` holds as `master`'s primary
    /// (`SENTINEL GET-MASTER-ADDR-BY-NAME`); `None` when it names none.
    pub async fn master_addr(
        &self,
        at: &SentinelAddr,
        master: &str,
    ) -> Result<Option<(String, u16)>, SentinelError> {
        let mut conn = self.connect(at).await?;
        let reply = self
            .call(
                &mut conn,
                at,
                &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", master],
                MAX_SMALL_REPLY,
            )
            .await?;
        Ok(match reply {
            Reply::Array(Some(items)) if items.len() == 2 => {
                match (items[0].as_text(), items[1].as_text()) {
                    (Some(ip), Some(port)) => port.parse().ok().map(|p| (ip, p)),
                    _ => None,
                }
            }
            _ => None,
        })
    }

    /// Sets one Sentinel's `down-after-milliseconds` for `master`.
    pub async fn set_down_after(
        &self,
        at: &SentinelAddr,
        master: &str,
        ms: u64,
    ) -> Result<(), SentinelError> {
        let mut conn = self.connect(at).await?;
        let ms = ms.to_string();
        self.call(
            &mut conn,
            at,
            &["SENTINEL", "SET", master, "down-after-milliseconds", &ms],
            MAX_SMALL_REPLY,
        )
        .await
        .map(|_| ())
    }

    /// Raises `down-after-milliseconds` on every Sentinel of `group`: reads every previous
    /// value, records them under `state_dir`, then sets each. When one cannot be set, the
    /// ones already set (and the one that failed: its reply may have been lost after it
    /// applied the change) are put back and the record removed: all or nothing. A
    /// Sentinel already at the suppressed value is refused
    /// ([`SentinelError::AlreadySuppressed`]): its value is not the one to put back.
    pub async fn suppress(
        &self,
        state_dir: &Path,
        group: &Group,
        restore_id: &str,
    ) -> Result<SuppressionRecord, SentinelError> {
        let mut previous = Vec::with_capacity(group.sentinels.len());
        for at in &group.sentinels {
            let ms = self.down_after(at, &group.master_name).await?;
            if ms >= SUPPRESSED_DOWN_AFTER_MS {
                return Err(SentinelError::AlreadySuppressed {
                    addr: at.to_string(),
                    ms,
                });
            }
            previous.push(RecordedSetting {
                host: at.host.clone(),
                port: at.port,
                down_after_milliseconds: ms,
            });
        }
        let record = SuppressionRecord {
            restore_id: restore_id.to_owned(),
            master_name: group.master_name.clone(),
            suppressed_to: SUPPRESSED_DOWN_AFTER_MS,
            sentinels: previous,
        };
        record.persist(state_dir).await?;
        for (n, s) in record.sentinels.iter().enumerate() {
            if let Err(e) = self
                .set_down_after(&s.addr(), &record.master_name, SUPPRESSED_DOWN_AFTER_MS)
                .await
            {
                // A refusal (an error reply) changed nothing there; any other failure may
                // have lost the reply of a SET that applied, so that Sentinel goes back too.
                let upto = if matches!(e, SentinelError::Command { .. }) {
                    n
                } else {
                    n + 1
                };
                let partial = SuppressionRecord {
                    sentinels: record.sentinels[..upto].to_vec(),
                    ..record.clone()
                };
                // On success this also removes the record; otherwise the record (of every
                // Sentinel, a superset) stays for the agent to put back later. The server
                // still runs: no need to wait for the Sentinels to hear it.
                let _ = self
                    .put_back(state_dir, &partial, std::time::Duration::ZERO)
                    .await;
                return Err(e);
            }
        }
        Ok(record)
    }

    /// Whether the Sentinel at `at` has heard the master answer lately enough that
    /// `down_after_ms` will not count it as down the moment it is back in force: no
    /// `s_down`/`disconnected` flag, and the last good `PING` reply younger than half of
    /// it.
    pub async fn sees_master_up(
        &self,
        at: &SentinelAddr,
        master: &str,
        down_after_ms: u64,
    ) -> Result<bool, SentinelError> {
        let mut conn = self.connect(at).await?;
        let reply = self
            .call(
                &mut conn,
                at,
                &["SENTINEL", "MASTER", master],
                MAX_SMALL_REPLY,
            )
            .await?;
        Ok(master_fresh(&fields(&reply), down_after_ms))
    }

    /// Sets every recorded Sentinel back to its previous value and, when all succeeded,
    /// removes the record. Returns each Sentinel's value now.
    ///
    /// Each Sentinel is first given up to `wait` to hear the restarted server answer
    /// ([`Sentinels::sees_master_up`]): while the server was stopped its pings went
    /// unanswered, and putting a short `down-after-milliseconds` back before a fresh reply
    /// makes it count the server as down at once — the failover the suppression was for.
    /// After `wait` the value is put back anyway (a server that stays down must fail over).
    ///
    /// The record file is removed only while it still names `record`'s restore: a later
    /// restore's record is never deleted by this one's put-back.
    pub async fn put_back(
        &self,
        state_dir: &Path,
        record: &SuppressionRecord,
        wait: std::time::Duration,
    ) -> Result<Vec<RecordedSetting>, (Vec<RecordedSetting>, SentinelError)> {
        self.wait_heard(record, tokio::time::Instant::now() + wait)
            .await;
        self.set_back(state_dir, record).await
    }

    /// Waits until every recorded Sentinel has heard the master answer lately
    /// ([`Sentinels::sees_master_up`]) or `until` passes; returns whether all did.
    pub async fn wait_heard(
        &self,
        record: &SuppressionRecord,
        until: tokio::time::Instant,
    ) -> bool {
        for s in &record.sentinels {
            let at = s.addr();
            loop {
                match self
                    .sees_master_up(&at, &record.master_name, s.down_after_milliseconds)
                    .await
                {
                    Ok(true) => break,
                    // Nothing to wait for there (see `set_back`).
                    Err(SentinelError::Command { detail, .. }) if no_such_master(&detail) => break,
                    Ok(false) | Err(_) if tokio::time::Instant::now() < until => {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await
                    }
                    Ok(false) | Err(_) => return false,
                }
            }
        }
        true
    }

    /// [`Sentinels::put_back`] without the wait: every recorded Sentinel set back now.
    pub async fn set_back(
        &self,
        state_dir: &Path,
        record: &SuppressionRecord,
    ) -> Result<Vec<RecordedSetting>, (Vec<RecordedSetting>, SentinelError)> {
        let mut now = Vec::new();
        let mut first_error = None;
        for s in &record.sentinels {
            match self
                .set_down_after(&s.addr(), &record.master_name, s.down_after_milliseconds)
                .await
            {
                Ok(()) => now.push(s.clone()),
                // That Sentinel no longer watches the master (it was removed from the
                // group, or the group renamed): it has no suppressed value left to put
                // back, and retrying would block every later restore for nothing.
                Err(SentinelError::Command { detail, .. }) if no_such_master(&detail) => {
                    tracing::warn!(sentinel = %s.addr(), master = %record.master_name, "this Sentinel no longer watches the master; nothing to put back there");
                    now.push(s.clone());
                }
                Err(e) => {
                    now.push(RecordedSetting {
                        down_after_milliseconds: record.suppressed_to,
                        ..s.clone()
                    });
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            None => match SuppressionRecord::forget(state_dir, &record.restore_id).await {
                Ok(()) => Ok(now),
                Err(e) => Err((now, SentinelError::Record(e.to_string()))),
            },
            Some(e) => Err((now, e)),
        }
    }
}

/// Whether a Sentinel's error answer says it watches no master of that name.
pub fn no_such_master(detail: &str) -> bool {
    detail.to_ascii_lowercase().contains("no such master")
}

/// One Sentinel and a `down-after-milliseconds` value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RecordedSetting {
    pub host: String,
    pub port: u16,
    pub down_after_milliseconds: u64,
}

impl RecordedSetting {
    pub fn addr(&self) -> SentinelAddr {
        SentinelAddr {
            host: self.host.clone(),
            port: self.port,
        }
    }
}

/// The values to put back, kept in the state directory (0600) from before the first
/// Sentinel is changed until the last one has its value back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SuppressionRecord {
    pub restore_id: String,
    pub master_name: String,
    pub suppressed_to: u64,
    /// Each Sentinel with the value it had before.
    pub sentinels: Vec<RecordedSetting>,
}

impl SuppressionRecord {
    /// Writes the record atomically ([`crate::statefile::replace_blocking`]: temp file,
    /// fsync, rename, fsync of the directory).
    pub fn store(&self, state_dir: &Path) -> Result<(), SentinelError> {
        let mut body =
            serde_json::to_vec_pretty(self).map_err(|e| SentinelError::Record(e.to_string()))?;
        body.push(b'\n');
        crate::statefile::replace_blocking(
            &state_dir.join(RECORD_FILE),
            &body,
            crate::statefile::Flush::Durable,
        )
        .map_err(|e| SentinelError::Record(e.kind().to_string()))
    }

    /// [`SuppressionRecord::store`] off the async workers.
    pub async fn persist(&self, state_dir: &Path) -> Result<(), SentinelError> {
        let (record, dir) = (self.clone(), state_dir.to_owned());
        tokio::task::spawn_blocking(move || record.store(&dir))
            .await
            .map_err(|e| SentinelError::Record(e.to_string()))?
    }

    /// [`SuppressionRecord::load`] off the async workers.
    pub async fn find(state_dir: &Path) -> std::io::Result<Option<Self>> {
        let dir = state_dir.to_owned();
        tokio::task::spawn_blocking(move || Self::load(&dir))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Removes the record if it is `restore_id`'s (another restore's stays), off the
    /// async workers.
    pub async fn forget(state_dir: &Path, restore_id: &str) -> std::io::Result<()> {
        let (dir, id) = (state_dir.to_owned(), restore_id.to_owned());
        tokio::task::spawn_blocking(move || match Self::load(&dir) {
            Ok(Some(r)) if r.restore_id == id => Self::remove(&dir),
            Ok(_) => Ok(()),
            // Unreadable: not ours to judge; it is replaced by the next record.
            Err(e) => Err(e),
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// The record an earlier restore left, if any.
    pub fn load(state_dir: &Path) -> std::io::Result<Option<Self>> {
        match std::fs::read(state_dir.join(RECORD_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes the record (absent is fine).
    pub fn remove(state_dir: &Path) -> std::io::Result<()> {
        match std::fs::remove_file(state_dir.join(RECORD_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(Some(s.as_bytes().to_vec()))
    }

    fn flat(pairs: &[(&str, &str)]) -> Reply {
        Reply::Array(Some(
            pairs.iter().flat_map(|(k, v)| [bulk(k), bulk(v)]).collect(),
        ))
    }

    #[test]
    fn masters_are_parsed_and_ours_is_found_by_run_id_then_address() {
        let reply = Reply::Array(Some(vec![
            flat(&[
                ("name", "other"),
                ("ip", "10.0.0.9"),
                ("port", "6379"),
                ("runid", "bbb"),
            ]),
            flat(&[
                ("name", "primary"),
                ("ip", "10.0.0.1"),
                ("port", "6379"),
                ("runid", "aaa"),
                ("down-after-milliseconds", "30000"),
                ("num-other-sentinels", "2"),
            ]),
        ]));
        let masters = parse_masters(&reply);
        assert_eq!(masters.len(), 2);
        assert_eq!(masters[1].down_after_ms, Some(30000));
        assert_eq!(masters[1].num_other_sentinels, Some(2));
        // By run id, whatever address and port the agent reaches the server on (TLS port).
        let found = find_master(&masters, Some("aaa"), &["192.0.2.1".into()], 6380).unwrap();
        assert_eq!(found.name, "primary");
        // By address when the run id is unknown (a restarted server has a new one).
        let found = find_master(&masters, Some("zzz"), &["10.0.0.9".into()], 6379).unwrap();
        assert_eq!(found.name, "other");
        assert!(find_master(&masters, None, &["10.0.0.1".into()], 6380).is_none());
        assert!(find_master(&masters, None, &["10.0.0.2".into()], 6379).is_none());
    }

    #[test]
    fn peers_and_odd_answers_parse_without_panicking() {
        let reply = Reply::Array(Some(vec![
            flat(&[("ip", "10.0.0.2"), ("port", "26379"), ("runid", "x")]),
            flat(&[("ip", "10.0.0.3"), ("port", "not a port")]),
            bulk("junk"),
        ]));
        assert_eq!(
            parse_peers(&reply),
            vec![SentinelAddr {
                host: "10.0.0.2".into(),
                port: 26379
            }]
        );
        assert!(parse_masters(&Reply::Integer(1)).is_empty());
        assert!(fields(&Reply::Array(Some(vec![bulk("odd")]))).is_empty());
    }

    #[test]
    fn the_record_round_trips_owner_only_and_removal_is_idempotent() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(SuppressionRecord::load(dir.path()).unwrap(), None);
        let record = SuppressionRecord {
            restore_id: "r1".into(),
            master_name: "primary".into(),
            suppressed_to: SUPPRESSED_DOWN_AFTER_MS,
            sentinels: vec![RecordedSetting {
                host: "10.0.0.1".into(),
                port: 26379,
                down_after_milliseconds: 30000,
            }],
        };
        record.store(dir.path()).unwrap();
        let meta = std::fs::metadata(dir.path().join(RECORD_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(SuppressionRecord::load(dir.path()).unwrap(), Some(record));
        SuppressionRecord::remove(dir.path()).unwrap();
        SuppressionRecord::remove(dir.path()).unwrap();
        assert_eq!(SuppressionRecord::load(dir.path()).unwrap(), None);
    }

    #[test]
    fn a_master_is_fresh_only_with_a_recent_good_ping_and_no_down_flags() {
        let f = |flags: &str, last: &str| {
            [("flags", flags), ("last-ok-ping-reply", last)]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(master_fresh(&f("master", "300"), 1500));
        assert!(!master_fresh(&f("master", "800"), 1500));
        assert!(!master_fresh(&f("s_down,master", "10"), 1500));
        assert!(!master_fresh(&f("master,disconnected", "10"), 30000));
        assert!(!master_fresh(&f("master", "x"), 30000));
        assert!(
            master_fresh(&f("master", "99"), 10),
            "at least 100 ms of slack"
        );
    }

    #[test]
    fn no_such_master_is_recognised_in_the_server_answer() {
        assert!(no_such_master(
            "the server refused the command: ERR No such master with that name"
        ));
        assert!(!no_such_master("NOPERM this user has no permissions"));
    }

    #[test]
    fn addresses_display_with_brackets_for_ipv6() {
        let v6 = SentinelAddr {
            host: "::1".into(),
            port: 26379,
        };
        assert_eq!(v6.to_string(), "[::1]:26379");
    }
}
