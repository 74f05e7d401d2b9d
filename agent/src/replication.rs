//! The built-in replication source: the agent asks the server for a snapshot itself.
//!
//! A Valkey primary chooses the RDB format per replica. A replica that never says which
//! version it runs gets the oldest format the server still writes for compatibility
//! (`REDIS0011` on Valkey 9), and that format cannot hold every Valkey 9 type: a hash
//! with field TTLs makes the server abort the transfer (`Can't store key … in RDB
//! version 11`). `valkey-cli --rdb -` never announces a version, so it cannot back up
//! such datasets. Announcing the server's own version (`REPLCONF version`) makes it send
//! its native format (`VALKEY080`) with every key.
//!
//! The handshake, in order, on a connection that is already logged in:
//!
//! 1. `REPLCONF capa eof` — diskless transfers (`$EOF:<mark>` framing) are understood;
//! 2. `REPLCONF rdb-only 1` — only the snapshot, no replication stream after it;
//! 3. `REPLCONF version <v>` — only to Valkey ≥ 9 (Redis refuses the option);
//! 4. `SYNC`, then the server sends keep-alive newlines until the snapshot starts, then
//!    `$<length>\r\n` or `$EOF:<40-byte mark>\r\n`, then the payload.
//!
//! No other capability is advertised: in particular not `skip-rdb-checksum`, which would
//! let the server send a snapshot without the CRC64 the validator checks.
//!
//! Because the framing is known exactly, the stream ends exactly at the snapshot's last
//! byte: after `<length>` bytes, or just before the end mark. Nothing is guessed about
//! trailing bytes (unlike `valkey-cli --rdb -` on a pipe, see [`crate::rdb`]). Memory is
//! one read buffer plus a 40-byte look-behind, whatever the snapshot's size.
//!
//! The pure parts ([`handshake_commands`], [`parse_preamble`], [`scan_for_mark`]) do no
//! I/O and are unit-tested; [`ReplicationStream`] drives them over any byte stream.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};

use crate::connection::{safe_line, Connection, MAX_SMALL_REPLY};
use crate::resp::{self, Reply};
use crate::valkey::{ServerInfo, ValkeyError};

/// Size of the end mark of a diskless transfer (`RDB_EOF_MARK_SIZE`).
pub const EOF_MARK_LEN: usize = 40;
/// The longest preamble line accepted (`$EOF:` + mark, or an error reply).
const MAX_PREAMBLE_LINE: usize = 4096;
/// How much of the payload is read at once (the caller's part buffers get this slack).
pub const READ_BUF: usize = 128 * 1024;

/// How the server frames the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// `$<length>`: exactly this many bytes follow (disk-based replication).
    Length(u64),
    /// `$EOF:<mark>`: the payload ends where these 40 bytes appear (diskless replication).
    EofMark([u8; EOF_MARK_LEN]),
}

/// The version to announce with `REPLCONF version`, when the server takes it.
///
/// Valkey 9 uses it to pick the RDB format; Redis answers it with an error and Valkey 8
/// has no use for it, so it is sent to Valkey ≥ 9 only, and it is the server's own
/// version, which every server of that version accepts.
pub fn announced_version(info: &ServerInfo) -> Option<&str> {
    if info.kind != "valkey" {
        return None;
    }
    let major: u32 = info.version.split('.').next()?.parse().ok()?;
    (major >= 9).then_some(info.version.as_str())
}

/// The `REPLCONF` commands sent before `SYNC`, in order.
pub fn handshake_commands(info: &ServerInfo) -> Vec<Vec<String>> {
    let mut cmds = vec![
        vec!["REPLCONF".into(), "capa".into(), "eof".into()],
        vec!["REPLCONF".into(), "rdb-only".into(), "1".into()],
    ];
    if let Some(v) = announced_version(info) {
        cmds.push(vec!["REPLCONF".into(), "version".into(), v.to_owned()]);
    }
    cmds
}

/// What the bytes after `SYNC` amount to so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preamble {
    /// Not enough bytes yet; the first `skip` are keep-alive newlines and can be dropped.
    NeedMore { skip: usize },
    /// The snapshot starts after the first `used` bytes.
    Header { framing: Framing, used: usize },
    /// The server refused `SYNC` with this error line.
    Refused(String),
}

/// Why the bytes after `SYNC` are not a snapshot header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected answer to SYNC: {0}")]
pub struct PreambleError(pub String);

/// Reads the server's answer to `SYNC` from the start of `buf`: keep-alive newlines,
/// then an error or the bulk header.
pub fn parse_preamble(buf: &[u8]) -> Result<Preamble, PreambleError> {
    let skip = buf.iter().take_while(|&&b| b == b'\n').count();
    let rest = &buf[skip..];
    let Some(&first) = rest.first() else {
        return Ok(Preamble::NeedMore { skip });
    };
    if first != b'$' && first != b'-' {
        return Err(PreambleError(resp::shown(rest)));
    }
    let Some(end) = memchr::memchr(b'\n', rest) else {
        if rest.len() > MAX_PREAMBLE_LINE {
            return Err(PreambleError(format!(
                "a header line longer than {MAX_PREAMBLE_LINE} bytes"
            )));
        }
        return Ok(Preamble::NeedMore { skip });
    };
    if end == 0 || rest[end - 1] != b'\r' || end > MAX_PREAMBLE_LINE {
        return Err(PreambleError(resp::shown(&rest[..end + 1])));
    }
    let line = &rest[1..end - 1];
    let used = skip + end + 1;
    if first == b'-' {
        return Ok(Preamble::Refused(safe_line(&String::from_utf8_lossy(line))));
    }
    if let Some(mark) = line.strip_prefix(b"EOF:") {
        let mark: [u8; EOF_MARK_LEN] = mark
            .try_into()
            .map_err(|_| PreambleError(format!("an end mark of {} bytes", mark.len())))?;
        return Ok(Preamble::Header {
            framing: Framing::EofMark(mark),
            used,
        });
    }
    let len = std::str::from_utf8(line)
        .ok()
        .filter(|s| !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| PreambleError(resp::shown(&rest[..end + 1])))?;
    Ok(Preamble::Header {
        framing: Framing::Length(len),
        used,
    })
}

/// Where the payload of a diskless transfer stands after looking at `window` (the
/// unreleased bytes: up to 39 held back from before, then the new ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkScan {
    /// The mark starts at this offset: the payload is `window[..offset]`; done.
    End(usize),
    /// No mark yet: `window[..n]` is payload for certain; the rest may be a mark's start.
    Release(usize),
}

/// Whether the window ends with the end mark. The server sends the mark last and then
/// nothing (an rdb-only replica is sent no replication stream; a diskless primary also
/// waits for an acknowledgement we never send), so the mark can only be the last 40
/// bytes received: Valkey's own replica detects the end this way. Only the window's tail
/// is compared (the payload is not searched: a search cost 5 % of a backup's CPU). The
/// last 39 bytes of every window are kept back and compared again with the next read,
/// so a mark split between reads is found. A mark counts as the end only when it is the
/// last thing received so far: were bytes to arrive with it in the same read, the
/// stream goes on (and fails when the connection closes); bytes sent after the read that
/// ended the stream are never read.
pub fn scan_for_mark(mark: &[u8; EOF_MARK_LEN], window: &[u8]) -> MarkScan {
    if window.ends_with(mark) {
        MarkScan::End(window.len() - EOF_MARK_LEN)
    } else {
        MarkScan::Release(window.len().saturating_sub(EOF_MARK_LEN - 1))
    }
}

/// A snapshot arriving over a replication connection, read exactly to its end.
///
/// It is an [`AsyncRead`] of the payload alone: bytes go from the socket straight into
/// the reader's buffer (no buffer of its own in between, no allocation per read). With
/// an end mark, the last 39 bytes of each read may be the start of the mark, so they are
/// kept back (copied aside, at most 39 bytes) and put in front of the next read.
pub struct ReplicationStream {
    conn: Connection,
    framing: Framing,
    /// Bytes read and not yet handed out: the held-back tail of the last read (end-mark
    /// framing), or whole reads when the reader's buffer was too small to read into.
    carry: Vec<u8>,
    /// How many leading bytes of `carry` are payload for certain.
    confirmed: usize,
    /// Payload bytes confirmed so far.
    delivered: u64,
    done: bool,
    /// The buffer of [`ReplicationStream::next_chunk`].
    chunk: Vec<u8>,
}

/// Below this much room in the reader's buffer, an end-mark stream reads into `carry`
/// first (the mark must fit into one window with room to release something).
const MIN_DIRECT_READ: usize = 4 * 1024;

impl ReplicationStream {
    /// Runs the handshake on a logged-in connection and waits (at most `header_timeout`,
    /// while the server prepares the snapshot) for the snapshot's header.
    pub async fn start(
        mut conn: Connection,
        info: &ServerInfo,
        header_timeout: Duration,
    ) -> Result<Self, ValkeyError> {
        let server = server_name(info);
        for cmd in handshake_commands(info) {
            let args: Vec<&[u8]> = cmd.iter().map(|s| s.as_bytes()).collect();
            conn.send(&args).await?;
            match conn.reply(MAX_SMALL_REPLY).await? {
                Reply::Simple(_) => {}
                Reply::Error(e) => {
                    return Err(refused(&server, &cmd.join(" "), &e));
                }
                other => return Err(conn.unexpected(&cmd.join(" "), &other)),
            }
        }
        conn.send(&[b"SYNC"]).await?;
        let framing = tokio::time::timeout(header_timeout, read_header(&mut conn, &server))
            .await
            .map_err(|_| ValkeyError::Interrupted {
                detail: format!(
                    "{server} sent no snapshot for {} s after SYNC (backup.stall-timeout-seconds)",
                    header_timeout.as_secs()
                ),
            })??;
        // From here on the connection carries the snapshot alone: bulk reads.
        conn.coalesce_reads();
        Ok(ReplicationStream::new(conn, framing))
    }

    /// A stream whose header has been read; the payload follows on `conn`.
    pub fn new(conn: Connection, framing: Framing) -> Self {
        let done = framing == Framing::Length(0);
        ReplicationStream {
            conn,
            framing,
            carry: Vec::with_capacity(EOF_MARK_LEN),
            confirmed: 0,
            delivered: 0,
            done,
            chunk: Vec::new(),
        }
    }

    /// The framing the server chose (`diskless` when it is an end mark).
    pub fn framing(&self) -> &Framing {
        &self.framing
    }

    /// The next piece of the payload, `None` after its last byte. Never returns bytes
    /// past the end; a connection that ends early is an error naming how far it got.
    pub async fn next_chunk(&mut self) -> Result<Option<&[u8]>, ValkeyError> {
        use tokio::io::AsyncReadExt;
        let mut chunk = std::mem::take(&mut self.chunk);
        chunk.resize(READ_BUF, 0);
        let r = self.read(&mut chunk).await;
        self.chunk = chunk;
        match r {
            Ok(0) => Ok(None),
            Ok(n) => Ok(Some(&self.chunk[..n])),
            Err(e) => Err(match e.into_inner().map(|i| i.downcast::<ValkeyError>()) {
                Some(Ok(v)) => *v,
                _ => self.broken("reading the snapshot"),
            }),
        }
    }

    fn broken(&self, what: &str) -> ValkeyError {
        let got = self.delivered + (self.carry.len() - self.confirmed) as u64;
        let detail = match self.framing {
            Framing::Length(len) => format!("{what} after {got} of {len} snapshot bytes"),
            Framing::EofMark(_) => {
                format!("{what} after {got} snapshot bytes, before the end mark")
            }
        };
        ValkeyError::Interrupted { detail }
    }

    fn broken_io(&self, what: &str) -> std::io::Error {
        std::io::Error::other(self.broken(what))
    }

    fn read_failed(&self, e: &std::io::Error) -> std::io::Error {
        self.broken_io(&format!("reading the snapshot: {}", e.kind()))
    }

    /// End-mark framing, reading into the reader's own buffer after the held-back bytes.
    fn poll_direct(
        &mut self,
        mark: &[u8; EOF_MARK_LEN],
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<bool>> {
        let before = buf.filled().len();
        buf.put_slice(&self.carry);
        let n = {
            let mut rest = buf.take(buf.remaining());
            match self.conn.poll_read_into(cx, &mut rest) {
                Poll::Ready(Ok(())) => rest.filled().len(),
                other => {
                    buf.set_filled(before);
                    return other.map(|r| r.map(|()| false).map_err(|e| self.read_failed(&e)));
                }
            }
        };
        if n == 0 {
            buf.set_filled(before);
            return Poll::Ready(Err(self.broken_io("the server closed the connection")));
        }
        // SAFETY: the connection filled (so initialised) the first `n` unfilled bytes.
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        let window = &buf.filled()[before..];
        match scan_for_mark(mark, window) {
            MarkScan::End(at) => {
                self.carry.clear();
                self.delivered += at as u64;
                self.done = true;
                buf.set_filled(before + at);
                Poll::Ready(Ok(true))
            }
            MarkScan::Release(out) => {
                self.carry.clear();
                self.carry.extend_from_slice(&window[out..]);
                self.delivered += out as u64;
                buf.set_filled(before + out);
                Poll::Ready(Ok(out > 0))
            }
        }
    }

    /// End-mark framing into `carry`, for a reader whose buffer is too small.
    fn poll_carry(
        &mut self,
        mark: &[u8; EOF_MARK_LEN],
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        let held = self.carry.len();
        self.carry.resize(held + MIN_DIRECT_READ, 0);
        let mut rb = ReadBuf::new(&mut self.carry[held..]);
        let r = self.conn.poll_read_into(cx, &mut rb);
        let n = rb.filled().len();
        self.carry.truncate(held + n);
        match r {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(self.read_failed(&e))),
            Poll::Ready(Ok(())) if n == 0 => {
                return Poll::Ready(Err(self.broken_io("the server closed the connection")))
            }
            Poll::Ready(Ok(())) => {}
        }
        match scan_for_mark(mark, &self.carry) {
            MarkScan::End(at) => {
                self.carry.truncate(at);
                self.done = true;
                self.confirmed = at;
            }
            MarkScan::Release(out) => self.confirmed = out,
        }
        self.delivered += self.confirmed as u64;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for ReplicationStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.confirmed > 0 {
                let n = this.confirmed.min(buf.remaining());
                buf.put_slice(&this.carry[..n]);
                this.carry.drain(..n);
                this.confirmed -= n;
                return Poll::Ready(Ok(()));
            }
            if this.done || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            match this.framing {
                Framing::Length(len) => {
                    let want = (len - this.delivered).min(buf.remaining() as u64) as usize;
                    let mut limited = buf.take(want);
                    match this.conn.poll_read_into(cx, &mut limited) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(this.read_failed(&e))),
                        Poll::Pending => return Poll::Pending,
                    }
                    let n = limited.filled().len();
                    if n == 0 {
                        return Poll::Ready(
                            Err(this.broken_io("the server closed the connection")),
                        );
                    }
                    // SAFETY: the connection filled the first `n` unfilled bytes.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    this.delivered += n as u64;
                    this.done = this.delivered == len;
                    return Poll::Ready(Ok(()));
                }
                Framing::EofMark(mark) if buf.remaining() >= MIN_DIRECT_READ => {
                    match this.poll_direct(&mark, cx, buf) {
                        Poll::Ready(Ok(true)) => return Poll::Ready(Ok(())),
                        // Everything read may still be the mark's start: read on.
                        Poll::Ready(Ok(false)) => continue,
                        other => return other.map(|r| r.map(|_| ())),
                    }
                }
                Framing::EofMark(mark) => match this.poll_carry(&mark, cx) {
                    Poll::Ready(Ok(())) => continue,
                    other => return other,
                },
            }
        }
    }
}

/// "Valkey 9.1.2" / "Redis 7.0.15", for messages.
fn server_name(info: &ServerInfo) -> String {
    let kind = if info.kind == "valkey" {
        "Valkey"
    } else {
        "Redis"
    };
    format!("{kind} {}", info.version)
}

fn refused(server: &str, command: &str, error: &str) -> ValkeyError {
    match crate::connection::classify_error(error, command) {
        ValkeyError::Refused { command, detail } => ValkeyError::Refused {
            command: format!("{command} (sent to {server})"),
            detail,
        },
        other => other,
    }
}

async fn read_header(conn: &mut Connection, server: &str) -> Result<Framing, ValkeyError> {
    loop {
        match parse_preamble(conn.buffered()) {
            Ok(Preamble::Header { framing, used }) => {
                conn.consume(used);
                return Ok(framing);
            }
            Ok(Preamble::Refused(line)) => return Err(refused(server, "SYNC", &line)),
            Ok(Preamble::NeedMore { skip }) => conn.consume(skip),
            Err(e) => {
                return Err(ValkeyError::Protocol {
                    addr: conn.addr().to_owned(),
                    detail: e.to_string(),
                })
            }
        }
        match conn.fill().await {
            Ok(0) => {
                return Err(ValkeyError::Interrupted {
                    detail: format!(
                        "{server} closed the connection after SYNC without sending a snapshot \
                         (its log says why, e.g. a key it cannot store in the RDB version it chose)"
                    ),
                })
            }
            Ok(_) => {}
            Err(e) => return Err(conn.io_error("waiting for the snapshot", &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn info(kind: &str, version: &str) -> ServerInfo {
        ServerInfo {
            kind: kind.into(),
            version: version.into(),
            ..Default::default()
        }
    }

    #[test]
    fn version_is_announced_to_valkey_9_and_later_only() {
        assert_eq!(announced_version(&info("valkey", "9.1.2")), Some("9.1.2"));
        assert_eq!(announced_version(&info("valkey", "10.0.0")), Some("10.0.0"));
        assert_eq!(announced_version(&info("valkey", "8.1.8")), None);
        assert_eq!(announced_version(&info("redis", "9.0.0")), None);
        assert_eq!(announced_version(&info("valkey", "")), None);
        let cmds = handshake_commands(&info("valkey", "8.1.8"));
        assert_eq!(
            cmds,
            vec![
                vec!["REPLCONF", "capa", "eof"],
                vec!["REPLCONF", "rdb-only", "1"]
            ]
        );
        let cmds = handshake_commands(&info("valkey", "9.1.2"));
        assert_eq!(cmds[2], vec!["REPLCONF", "version", "9.1.2"]);
        assert!(
            !cmds.concat().iter().any(|a| a.contains("checksum")),
            "never skip-rdb-checksum"
        );
    }

    const MARK: &[u8; 40] = b"8527f57d1ebd4651cad3333721decaa86b3356ee";

    #[test]
    fn preamble_skips_keepalives_and_reads_both_framings() {
        assert_eq!(parse_preamble(b""), Ok(Preamble::NeedMore { skip: 0 }));
        assert_eq!(
            parse_preamble(b"\n\n\n"),
            Ok(Preamble::NeedMore { skip: 3 })
        );
        assert_eq!(
            parse_preamble(b"\n\n$12"),
            Ok(Preamble::NeedMore { skip: 2 })
        );
        assert_eq!(
            parse_preamble(b"\n$1234\r\nREDIS"),
            Ok(Preamble::Header {
                framing: Framing::Length(1234),
                used: 8
            })
        );
        let mut eof = b"\n\n$EOF:".to_vec();
        eof.extend_from_slice(MARK);
        eof.extend_from_slice(b"\r\nVALKEY080");
        assert_eq!(
            parse_preamble(&eof),
            Ok(Preamble::Header {
                framing: Framing::EofMark(*MARK),
                used: eof.len() - 9
            })
        );
        assert_eq!(
            parse_preamble(b"-NOPERM no sync\r\n"),
            Ok(Preamble::Refused("NOPERM no sync".into()))
        );
    }

    #[test]
    fn preamble_garbage_is_an_error() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\n"[..],
            b"+FULLRESYNC x 0\r\n",
            b"$12x\r\n",
            b"$-1\r\n",
            b"$EOF:short\r\n",
            b"$12\n",
            &[b'$'; 5000],
        ] {
            assert!(parse_preamble(bad).is_err(), "{}", resp::shown(bad));
        }
    }

    #[test]
    fn mark_scan_ends_only_at_a_trailing_mark_and_holds_back_39_bytes() {
        let mut w = b"payload".to_vec();
        w.extend_from_slice(MARK);
        assert_eq!(scan_for_mark(MARK, &w), MarkScan::End(7));
        assert_eq!(scan_for_mark(MARK, &w[7..]), MarkScan::End(0));
        assert_eq!(scan_for_mark(MARK, &w[..46]), MarkScan::Release(7));
        assert_eq!(scan_for_mark(MARK, b"short"), MarkScan::Release(0));
        assert_eq!(scan_for_mark(MARK, &[b'x'; 100]), MarkScan::Release(61));
        // A mark with bytes after it is not the end.
        w.extend_from_slice(b"more");
        assert_eq!(scan_for_mark(MARK, &w), MarkScan::Release(w.len() - 39));
    }

    /// A stream over an in-memory connection whose far end writes `wire` in pieces of
    /// `chunk` bytes, then keeps the connection open briefly so that only framing ends
    /// the stream.
    fn feed(
        wire: Vec<u8>,
        chunk: usize,
        framing: Framing,
    ) -> (ReplicationStream, tokio::task::JoinHandle<()>) {
        let (client, mut server) = tokio::io::duplex(chunk.max(64));
        let feeder = tokio::spawn(async move {
            for piece in wire.chunks(chunk) {
                if server.write_all(piece).await.is_err() {
                    return;
                }
            }
            let mut sink = [0u8; 1];
            let _ = tokio::time::timeout(Duration::from_millis(200), server.read(&mut sink)).await;
        });
        let s = ReplicationStream::new(Connection::new(Box::new(client), "mem"), framing);
        (s, feeder)
    }

    /// Serves `wire` in pieces of `chunk` bytes over an in-memory stream and collects
    /// the payload the stream delivers.
    async fn deliver(
        wire: Vec<u8>,
        chunk: usize,
        framing: Framing,
    ) -> Result<Vec<u8>, ValkeyError> {
        let (mut s, feeder) = feed(wire, chunk, framing);
        let mut out = Vec::new();
        let r = loop {
            match s.next_chunk().await {
                Ok(Some(c)) => out.extend_from_slice(c),
                Ok(None) => break Ok(out),
                Err(e) => break Err(e),
            }
        };
        feeder.abort();
        r
    }

    /// Like [`deliver`], reading through `AsyncRead` into buffers of `read` bytes.
    async fn read_all(wire: Vec<u8>, chunk: usize, framing: Framing, read: usize) -> Vec<u8> {
        let (mut s, feeder) = feed(wire, chunk, framing);
        let mut out = Vec::new();
        let mut buf = vec![0u8; read];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        feeder.abort();
        out
    }

    #[tokio::test]
    async fn reads_of_any_size_get_exactly_the_payload() {
        for n in [0usize, 39, 40, 5000, 70_000] {
            let body = payload(n);
            let mut eof = body.clone();
            eof.extend_from_slice(MARK);
            let mut length = body.clone();
            length.extend_from_slice(b"\n+PING");
            for read in [
                1usize,
                7,
                39,
                41,
                MIN_DIRECT_READ - 1,
                MIN_DIRECT_READ,
                1 << 20,
            ] {
                for chunk in [33usize, 4096, 65536] {
                    let got = read_all(eof.clone(), chunk, Framing::EofMark(*MARK), read).await;
                    assert_eq!(got, body, "eof: n {n} read {read} chunk {chunk}");
                    let framing = Framing::Length(n as u64);
                    let got = read_all(length.clone(), chunk, framing, read).await;
                    assert_eq!(got, body, "length: n {n} read {read} chunk {chunk}");
                }
            }
        }
    }

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn eof_framing_stops_exactly_before_the_mark_for_every_chunking() {
        for n in [0usize, 1, 39, 40, 41, 1000, READ_BUF + 17, 2 * READ_BUF] {
            let body = payload(n);
            let mut wire = body.clone();
            wire.extend_from_slice(MARK);
            for chunk in [1usize, 7, 40, 41, 4096] {
                if n > 5000 && chunk < 4096 {
                    continue;
                }
                let got = deliver(wire.clone(), chunk, Framing::EofMark(*MARK))
                    .await
                    .unwrap();
                assert_eq!(got, body, "n {n} chunk {chunk}");
            }
        }
    }

    /// Hands out its pieces exactly, one per read (a read with less room takes what fits,
    /// the rest stays for the next), and fails any read after the last: a stream that
    /// reads past the end mark is caught, and no in-memory pipe merges small writes.
    struct Pieces(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let Some(front) = self.0.front_mut() else {
                return Poll::Ready(Err(std::io::Error::other("read past the last piece")));
            };
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            front.drain(..n);
            if front.is_empty() {
                self.0.pop_front();
            }
            Poll::Ready(Ok(()))
        }
    }

    impl tokio::io::AsyncWrite for Pieces {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Reads a stream over `pieces` to its end with read buffers of the sizes in `reads`,
    /// in turn.
    async fn read_pieces(pieces: Vec<Vec<u8>>, reads: &[usize]) -> std::io::Result<Vec<u8>> {
        let conn = Connection::new(Box::new(Pieces(pieces.into())), "pieces");
        let mut s = ReplicationStream::new(conn, Framing::EofMark(*MARK));
        let mut out = Vec::new();
        for i in 0.. {
            let mut buf = vec![0u8; reads[i % reads.len()]];
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
        unreachable!()
    }

    /// Every place the wire can be cut in two, and (for short payloads) in three, with
    /// read buffers small and large and mixed, so that both the direct reads and the
    /// reads through the held-back bytes see the mark split at every offset: the payload
    /// comes out exactly, and nothing is read after the mark.
    #[tokio::test]
    async fn the_mark_is_found_split_at_every_offset_and_nothing_after_it_is_read() {
        let reads: [&[usize]; 5] = [
            &[1],
            &[7],
            &[MIN_DIRECT_READ],
            &[1 << 16],
            &[3, MIN_DIRECT_READ, 1, 1 << 16, 39],
        ];
        for n in [0usize, 1, 39, 40, 41, 200] {
            let body = payload(n);
            let mut wire = body.clone();
            wire.extend_from_slice(MARK);
            let mut cuts: Vec<Vec<Vec<u8>>> = vec![vec![wire.clone()]];
            for a in 1..wire.len() {
                cuts.push(vec![wire[..a].to_vec(), wire[a..].to_vec()]);
                if n <= 41 {
                    for b in a + 1..wire.len() {
                        cuts.push(vec![
                            wire[..a].to_vec(),
                            wire[a..b].to_vec(),
                            wire[b..].to_vec(),
                        ]);
                    }
                }
            }
            for pieces in cuts {
                for r in reads {
                    let sizes: Vec<usize> = pieces.iter().map(Vec::len).collect();
                    let got = read_pieces(pieces.clone(), r).await;
                    assert_eq!(
                        got.as_ref().ok(),
                        Some(&body),
                        "n {n}, pieces {sizes:?}, reads {r:?}: {got:?}"
                    );
                }
            }
        }
    }

    /// The servers send nothing after the mark. Were bytes to arrive with it in one read,
    /// the mark is not the end: the stream ends with the connection, which is an error.
    #[tokio::test]
    async fn bytes_after_the_mark_are_an_error_not_a_payload() {
        for chunk in [7usize, 4096] {
            let mut wire = payload(1000);
            wire.extend_from_slice(MARK);
            wire.extend_from_slice(b"+PING");
            let err = deliver(wire, chunk, Framing::EofMark(*MARK))
                .await
                .unwrap_err();
            assert!(err.to_string().contains("before the end mark"), "{err}");
        }
    }

    #[tokio::test]
    async fn length_framing_stops_exactly_at_the_length() {
        for n in [1usize, 100, READ_BUF + 3] {
            let body = payload(n);
            let mut wire = body.clone();
            wire.extend_from_slice(b"\n+PING trailing replication bytes");
            for chunk in [1usize, 13, 4096] {
                if n > 5000 && chunk < 4096 {
                    continue;
                }
                let got = deliver(wire.clone(), chunk, Framing::Length(n as u64))
                    .await
                    .unwrap();
                assert_eq!(got, body, "n {n} chunk {chunk}");
            }
        }
    }

    #[tokio::test]
    async fn a_connection_that_ends_early_is_an_error_naming_how_far_it_got() {
        let err = deliver(payload(100), 10, Framing::Length(1000))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("after 100 of 1000"), "{err}");
        let err = deliver(payload(100), 10, Framing::EofMark(*MARK))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("before the end mark"), "{err}");
    }

    /// The whole handshake against a scripted peer on an in-memory stream.
    async fn handshake_against(
        version: &str,
        answers: &'static [u8],
    ) -> (Result<Vec<u8>, ValkeyError>, Vec<u8>) {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let peer = tokio::spawn(async move {
            server.write_all(answers).await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(300), server.read(&mut buf)).await
            {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        let conn = Connection::new(Box::new(client), "mem");
        let r =
            match ReplicationStream::start(conn, &info("valkey", version), Duration::from_secs(5))
                .await
            {
                Ok(mut s) => {
                    let mut out = Vec::new();
                    loop {
                        match s.next_chunk().await {
                            Ok(Some(c)) => out.extend_from_slice(c),
                            Ok(None) => break Ok(out),
                            Err(e) => break Err(e),
                        }
                    }
                }
                Err(e) => Err(e),
            };
        (r, peer.await.unwrap())
    }

    #[tokio::test]
    async fn handshake_sends_replconfs_then_sync_and_reads_the_payload() {
        let (r, sent) =
            handshake_against("9.1.2", b"+OK\r\n+OK\r\n+OK\r\n\n\n$5\r\nhello+more").await;
        assert_eq!(r.unwrap(), b"hello");
        let expected = [
            resp::encode(&[b"REPLCONF", b"capa", b"eof"]),
            resp::encode(&[b"REPLCONF", b"rdb-only", b"1"]),
            resp::encode(&[b"REPLCONF", b"version", b"9.1.2"]),
            resp::encode(&[b"SYNC"]),
        ]
        .concat();
        assert_eq!(sent, expected);
    }

    #[tokio::test]
    async fn a_refused_replconf_names_the_server_and_the_command() {
        let (r, _) =
            handshake_against("9.1.2", b"+OK\r\n-ERR Unrecognized REPLCONF option\r\n").await;
        let msg = r.unwrap_err().to_string();
        assert!(
            msg.contains("REPLCONF rdb-only 1") && msg.contains("Valkey 9.1.2"),
            "{msg}"
        );
        let (r, _) = handshake_against(
            "8.1.8",
            b"+OK\r\n+OK\r\n-NOPERM this user has no permissions to run the 'sync' command\r\n",
        )
        .await;
        let err = r.unwrap_err();
        assert!(matches!(err, ValkeyError::Permission { .. }), "{err}");
        assert!(err.to_string().contains("+sync"), "{err}");
    }

    #[tokio::test]
    async fn garbage_instead_of_a_snapshot_is_a_protocol_error() {
        let (r, _) =
            handshake_against("8.1.8", b"+OK\r\n+OK\r\nHTTP/1.1 400 Bad Request\r\n").await;
        let err = r.unwrap_err();
        assert!(matches!(err, ValkeyError::Protocol { .. }), "{err}");
    }
}
