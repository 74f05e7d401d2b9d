//! Property tests over the agent's pure logic, through the library's public API.
//!
//! Each property runs `PROPTEST_CASES` generated cases (proptest's default, 256, when
//! unset), which keeps `cargo test` fast; `scripts/proptest-soak.sh` runs the same
//! properties with a large case count. Inputs come from bytes and strings off the wire or
//! out of the bucket (request lines, RDB streams, records, ids), so the first property of
//! each group is "never panics, always a typed answer"; the others pin what a valid input
//! must give.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::Value;
use time::OffsetDateTime;
use valkey_backup_agent::backup_id::BackupId;
use valkey_backup_agent::layout::{FailureRecord, ManifestV1};
use valkey_backup_agent::protocol::{parse_request, BackupStatus};
use valkey_backup_agent::rdb::{RdbError, RdbValidator, Validated, EOF_MARK_LEN};
use valkey_backup_agent::retention::{select, Listed, Policy, Verdict};
use valkey_backup_agent::timefmt;

// ---------------------------------------------------------------------------------------
// RDB validator
// ---------------------------------------------------------------------------------------

/// The table-driven `crc` crate as a reference independent of the validator's CRC.
static REFERENCE: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_REDIS);

/// Feeds `stream` to `v` cut at the (cyclically repeated) `cuts` sizes; returns the bytes
/// released plus the tail `finish` returned, and what `finish` said.
fn run(
    mut v: RdbValidator,
    stream: &[u8],
    cuts: &[usize],
) -> Result<(Vec<u8>, Validated), RdbError> {
    let mut out = Vec::new();
    let mut rest = stream;
    let mut i = 0;
    while !rest.is_empty() {
        let n = cuts
            .get(i % cuts.len().max(1))
            .copied()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        v.push(chunk, |b| out.extend_from_slice(b))?;
        rest = tail;
        i += 1;
    }
    let done = v.finish()?;
    out.extend_from_slice(&done.tail);
    Ok((out, done))
}

/// A header the validator accepts: `REDIS` + 4 digits or `VALKEY` + 3 digits.
fn rdb_header() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[0-9]{4}".prop_map(|d| format!("REDIS{d}").into_bytes()),
        "[0-9]{3}".prop_map(|d| format!("VALKEY{d}").into_bytes()),
    ]
}

/// A valid RDB: header, arbitrary body, `0xFF`, CRC-64 of everything before it.
fn valid_rdb() -> impl Strategy<Value = Vec<u8>> {
    (rdb_header(), prop::collection::vec(any::<u8>(), 0..1500)).prop_map(|(mut v, body)| {
        v.extend_from_slice(&body);
        v.push(0xFF);
        let crc = REFERENCE.checksum(&v);
        v.extend_from_slice(&crc.to_le_bytes());
        v
    })
}

/// Whether `bytes` end in `0xFF` + the CRC-64 of everything before the CRC: a complete
/// RDB as far as its framing tells.
fn is_whole_rdb(bytes: &[u8]) -> bool {
    let n = bytes.len();
    n >= 18
        && bytes[n - 9] == 0xFF
        && REFERENCE.checksum(&bytes[..n - 8]).to_le_bytes() == bytes[n - 8..]
}

/// Chunk sizes: small ones to cut inside the header and the held-back trailer, larger
/// ones to release in bulk.
fn chunking() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![1usize..12, 1usize..700], 1..8)
}

proptest! {
    /// Any bytes, cut anyhow, give a verdict (never a panic), the same whatever the
    /// chunking; an accepted stream's released bytes are a prefix of the input.
    #[test]
    fn rdb_arbitrary_bytes_never_panic(
        header in prop_oneof![rdb_header(), prop::collection::vec(any::<u8>(), 0..12)],
        body in prop::collection::vec(any::<u8>(), 0..600),
        cuts in chunking(),
    ) {
        let mut stream = header;
        stream.extend_from_slice(&body);
        for make in [RdbValidator::new, RdbValidator::exact] {
            let whole = run(make(), &stream, &[]);
            let cut = run(make(), &stream, &cuts);
            prop_assert_eq!(&whole, &cut);
            if let Ok((out, done)) = cut {
                prop_assert!(stream.starts_with(&out));
                prop_assert_eq!(out.len() as u64, done.rdb_bytes);
            }
        }
    }

    /// A valid RDB is accepted byte for byte, identically for every chunking, by both the
    /// cli validator and the exact one.
    #[test]
    fn rdb_valid_stream_accepted_whatever_the_chunking(rdb in valid_rdb(), cuts in chunking()) {
        for make in [RdbValidator::new, RdbValidator::exact] {
            let (whole_out, whole) = run(make(), &rdb, &[]).expect("valid RDB accepted");
            let (out, done) = run(make(), &rdb, &cuts).expect("valid RDB accepted when cut");
            prop_assert_eq!(&out, &rdb);
            prop_assert_eq!(&whole_out, &rdb);
            prop_assert_eq!(&done, &whole);
            prop_assert_eq!(done.rdb_bytes, rdb.len() as u64);
            prop_assert!(!done.eof_mark_stripped);
            prop_assert_eq!(done.crc64, REFERENCE.checksum(&rdb[..rdb.len() - 8]));
        }
    }

    /// A diskless EOF marker after a valid RDB is stripped by the cli validator (the RDB
    /// comes out exactly) and refused by the exact one.
    #[test]
    fn rdb_eof_marker_stripped_only_by_cli_validator(
        rdb in valid_rdb(),
        mark in "[0-9a-f]{40}",
        cuts in chunking(),
    ) {
        prop_assert_eq!(mark.len(), EOF_MARK_LEN);
        let mut padded = rdb.clone();
        padded.extend_from_slice(mark.as_bytes());
        let (out, done) = run(RdbValidator::new(), &padded, &cuts).expect("marker stripped");
        prop_assert_eq!(&out, &rdb);
        prop_assert!(done.eof_mark_stripped);
        prop_assert!(run(RdbValidator::exact(), &padded, &cuts).is_err());
    }

    /// Any single changed byte of a valid RDB is refused, whatever the chunking.
    #[test]
    fn rdb_flipped_byte_refused(
        rdb in valid_rdb(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
        cuts in chunking(),
    ) {
        let mut bad = rdb;
        let i = at.index(bad.len());
        bad[i] ^= mask;
        for make in [RdbValidator::new, RdbValidator::exact] {
            prop_assert!(run(make(), &bad, &cuts).is_err(), "byte {} ^ {:#x} accepted", i, mask);
        }
    }

    /// Every strict prefix of a valid RDB is refused, whatever the chunking, unless the
    /// prefix is itself a complete RDB (see `a_prefix_that_is_itself_a_whole_rdb`).
    #[test]
    fn rdb_truncation_refused(
        rdb in valid_rdb(),
        at in any::<prop::sample::Index>(),
        cuts in chunking(),
    ) {
        let cut = at.index(rdb.len());
        let prefix = &rdb[..cut];
        if is_whole_rdb(prefix) {
            return Ok(());
        }
        for make in [RdbValidator::new, RdbValidator::exact] {
            prop_assert!(run(make(), prefix, &cuts).is_err(), "prefix of {} accepted", cut);
        }
    }
}

/// Found by the soak (554,241 cases in): the trailer framing alone cannot tell a stream
/// one byte short from a whole one when the body ends in `0xFF` and the CRC's last byte
/// (little-endian, its top byte) is `0x00`: without that byte, the body's `0xFF` reads
/// as the EOF opcode and the real opcode plus seven CRC bytes as the CRC of what came
/// before, and they are exactly that: the reflected CRC's byte step is a bijection, and
/// `crc(x ‖ FF) = c` with `c >> 56 == 0` is solved by `crc(x) = c << 8 | FF`. A stream
/// source that knows the length (the built-in client's `$<len>` framing) refuses such a
/// cut; the `cli` source relies on the cli's exit status. Chance for random bytes:
/// 2^-16 per stream cut exactly one byte short.
#[test]
fn a_prefix_that_is_itself_a_whole_rdb() {
    // Search a body ending in 0xFF whose RDB's CRC ends in 0x00 (about 1 in 256 tries).
    let mut body = vec![0x42u8; 16];
    body.push(0xFF);
    let whole = (0u32..)
        .map(|i| {
            let mut v = b"REDIS0011".to_vec();
            v.extend_from_slice(&i.to_le_bytes());
            v.extend_from_slice(&body);
            v.push(0xFF);
            let crc = REFERENCE.checksum(&v);
            v.extend_from_slice(&crc.to_le_bytes());
            v
        })
        .find(|v| v[v.len() - 1] == 0)
        .unwrap();
    let short = &whole[..whole.len() - 1];
    assert!(is_whole_rdb(short));
    assert!(run(RdbValidator::new(), short, &[7]).is_ok());
    // One more byte off is refused again.
    assert!(run(RdbValidator::new(), &whole[..whole.len() - 2], &[7]).is_err());
}

// ---------------------------------------------------------------------------------------
// Arbitrary JSON
// ---------------------------------------------------------------------------------------

/// Any JSON value, a few levels deep.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z-]{0,10}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

// ---------------------------------------------------------------------------------------
// Protocol request parser
// ---------------------------------------------------------------------------------------

const OPS: &[&str] = &[
    "status",
    "configure",
    "create-backup",
    "list-backups",
    "restore-backup",
    "verify-backup",
    "prune-backups",
];

proptest! {
    /// Any bytes give a request or a typed refusal with a protocol code.
    #[test]
    fn request_arbitrary_bytes_never_panic(line in prop::collection::vec(any::<u8>(), 0..512)) {
        match parse_request(&line) {
            Ok(r) => prop_assert!(r.params.is_object()),
            Err(e) => {
                let _ = (e.code(), e.to_string());
            }
        }
    }

    /// Any JSON value, and any envelope-shaped object, gives a request or a typed refusal;
    /// a request is accepted only with `v` 1, a known op and object (or absent) params.
    #[test]
    fn request_arbitrary_json_never_panics(
        v in prop_oneof![Just(Value::from(1)), json()],
        op in prop_oneof![prop::sample::select(OPS).prop_map(Value::from), json()],
        params in prop::option::of(json()),
        anything in json(),
    ) {
        let _ = parse_request(&serde_json::to_vec(&anything).unwrap()).map_err(|e| e.code());
        let mut env = serde_json::Map::new();
        env.insert("v".into(), v.clone());
        env.insert("op".into(), op.clone());
        if let Some(p) = &params {
            env.insert("params".into(), p.clone());
        }
        match parse_request(&serde_json::to_vec(&Value::Object(env)).unwrap()) {
            Ok(r) => {
                prop_assert_eq!(v.as_u64(), Some(1));
                prop_assert_eq!(op.as_str(), Some(r.op.as_str()));
                prop_assert!(r.params.is_object());
                if let Some(p @ Value::Object(_)) = &params {
                    // Compared with what serde_json reads back: it rounds some floats.
                    let sent: Value = serde_json::from_slice(&serde_json::to_vec(p).unwrap()).unwrap();
                    prop_assert_eq!(&r.params, &sent);
                }
            }
            Err(e) => {
                let _ = (e.code(), e.to_string());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Manifest and failure records
// ---------------------------------------------------------------------------------------

fn manifest() -> impl Strategy<Value = ManifestV1> {
    let text = || ".{0,24}";
    (
        (any::<u32>(), text(), text(), text(), text(), text(), text()),
        (text(), text(), any::<u16>(), text(), text(), any::<u64>()),
        (
            any::<u64>(),
            text(),
            text(),
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
        ),
        (
            prop::option::of(text()),
            prop::collection::btree_map(text(), any::<u64>(), 0..4),
            any::<bool>(),
            text(),
        ),
        (any::<Option<i32>>(), prop::option::of(text())),
    )
        .prop_map(|(a, b, c, d, e)| ManifestV1 {
            format_version: a.0,
            backup_id: a.1,
            cluster: a.2,
            unit: a.3,
            started_at: a.4,
            finished_at: a.5,
            source_kind: a.6,
            source_version: b.0,
            rdb_magic: b.1,
            rdb_version: b.2,
            data_key: b.3,
            compression: b.4,
            stored_size_bytes: b.5,
            raw_size_bytes: c.0,
            sha256: c.1,
            crc64: c.2,
            parts: c.3,
            part_size_bytes: c.4,
            eof_mark_stripped: c.5,
            source: d.0,
            keyspace_at_start: d.1,
            keyspace_exact: d.2,
            agent_version: d.3,
            compression_level: e.0,
            encryption: None,
            raw_sha256: e.1,
        })
}

fn failure_record() -> impl Strategy<Value = FailureRecord> {
    let text = || ".{0,24}";
    (
        (any::<u32>(), text(), text(), text(), text(), text()),
        (text(), text(), text(), any::<u64>(), text()),
    )
        .prop_map(|(a, b)| FailureRecord {
            format_version: a.0,
            backup_id: a.1,
            cluster: a.2,
            unit: a.3,
            started_at: a.4,
            failed_at: a.5,
            phase: b.0,
            code: b.1,
            reason: b.2,
            bytes_streamed: b.3,
            agent_version: b.4,
        })
}

/// Replaces (or, with `None`, removes) one field of a serialised record, so that parsing
/// gets past the first fields and meets a wrong one.
fn mutate(record: Value, field: prop::sample::Index, with: Option<Value>) -> Value {
    let Value::Object(mut m) = record else {
        unreachable!("records serialise to objects")
    };
    let key = m.keys().nth(field.index(m.len())).cloned().unwrap();
    match with {
        Some(v) => m.insert(key, v),
        None => m.remove(&key),
    };
    Value::Object(m)
}

proptest! {
    /// Bytes from the bucket never panic the record parsers.
    #[test]
    fn records_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = serde_json::from_slice::<ManifestV1>(&bytes);
        let _ = serde_json::from_slice::<FailureRecord>(&bytes);
    }

    /// Arbitrary JSON, and valid records with one field replaced or removed, never panic;
    /// whatever parses serialises back to the same record.
    #[test]
    fn records_arbitrary_json_never_panic(
        anything in json(),
        m in manifest(),
        f in failure_record(),
        field in any::<prop::sample::Index>(),
        with in prop::option::of(json()),
    ) {
        let _ = serde_json::from_value::<ManifestV1>(anything.clone());
        let _ = serde_json::from_value::<FailureRecord>(anything);
        let bent = mutate(serde_json::to_value(&m).unwrap(), field, with.clone());
        if let Ok(parsed) = serde_json::from_slice::<ManifestV1>(&serde_json::to_vec(&bent).unwrap()) {
            let again: ManifestV1 = serde_json::from_value(serde_json::to_value(&parsed).unwrap()).unwrap();
            prop_assert_eq!(again, parsed);
        }
        let bent = mutate(serde_json::to_value(&f).unwrap(), field, with);
        if let Ok(parsed) = serde_json::from_slice::<FailureRecord>(&serde_json::to_vec(&bent).unwrap()) {
            let again: FailureRecord = serde_json::from_value(serde_json::to_value(&parsed).unwrap()).unwrap();
            prop_assert_eq!(again, parsed);
        }
    }

    /// Generated records survive the trip through the bucket's bytes unchanged.
    #[test]
    fn records_round_trip(m in manifest(), f in failure_record()) {
        let back: ManifestV1 = serde_json::from_slice(&serde_json::to_vec(&m).unwrap()).unwrap();
        prop_assert_eq!(back, m);
        let back: FailureRecord = serde_json::from_slice(&serde_json::to_vec(&f).unwrap()).unwrap();
        prop_assert_eq!(back, f);
    }
}

// ---------------------------------------------------------------------------------------
// Backup ids
// ---------------------------------------------------------------------------------------

/// Unix seconds from 1970 to the end of year 9999 (ids carry a 4-digit year).
const MAX_ID_SECS: i64 = 253_402_300_799;

/// A Juju-style unit name: letters, digits, '-' and '/', not starting or ending in '-'
/// or '/'.
fn unit_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9]([a-zA-Z0-9/-]{0,62}[a-zA-Z0-9])?"
}

fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap()
}

proptest! {
    /// Any string, and strings shaped almost like ids, give an id or a typed refusal; an
    /// accepted id is the input unchanged and carries a start time.
    #[test]
    fn backup_id_arbitrary_strings_never_panic(
        s in prop_oneof![
            any::<String>(),
            "[0-9]{8}T[0-9]{6}Z-[a-z0-9/.-]{0,70}-[0-9a-fA-F]{5,7}",
            "[0-9T]{0,18}Z?-?.{0,10}",
        ],
    ) {
        match BackupId::parse(&s) {
            Ok(id) => {
                prop_assert_eq!(id.as_str(), s.as_str());
                prop_assert_eq!(id.to_string(), s.clone());
                let _ = id.started_at();
                prop_assert_eq!(BackupId::parse(&s), Ok(id));
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }

    /// Generated ids parse back to themselves, carry their start second, and order like
    /// their start times.
    #[test]
    fn backup_id_generated_round_trips_and_sorts(
        t1 in 0..=MAX_ID_SECS,
        t2 in 0..=MAX_ID_SECS,
        u1 in unit_name(),
        u2 in unit_name(),
    ) {
        let a = BackupId::generate(at(t1), &u1).expect("valid unit");
        let b = BackupId::generate(at(t2), &u2).expect("valid unit");
        prop_assert_eq!(BackupId::parse(a.as_str()), Ok(a.clone()));
        prop_assert_eq!(a.as_str().parse::<BackupId>(), Ok(a.clone()));
        prop_assert_eq!(a.started_at(), at(t1));
        prop_assert_eq!(b.started_at(), at(t2));
        if t1 != t2 {
            prop_assert_eq!(t1 < t2, a < b);
            prop_assert_eq!(t1 < t2, a.as_str() < b.as_str());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Retention
// ---------------------------------------------------------------------------------------

const STATUSES: &[BackupStatus] = &[
    BackupStatus::Finished,
    BackupStatus::Damaged,
    BackupStatus::Failed,
    BackupStatus::Running,
    BackupStatus::Incomplete,
    BackupStatus::Abandoned,
];

/// Start of the window backups are generated in (2026-01-01).
const BASE: i64 = 1_767_225_600;
/// The window: 60 days.
const SPAN: i64 = 60 * 86_400;

/// Up to 40 backups with distinct ids, statuses weighted towards finished, each with a
/// store time: mostly within the hour after its id, sometimes none (running), and
/// sometimes far from it either way (a unit's clock off by up to two years).
fn backups() -> impl Strategy<Value = Vec<Listed>> {
    let status = prop_oneof![
        3 => Just(BackupStatus::Finished),
        2 => prop::sample::select(STATUSES),
    ];
    let stored = prop_oneof![
        6 => (0i64..3_600).prop_map(Some),
        1 => Just(None),
        2 => (-730 * 86_400i64..730 * 86_400).prop_map(Some),
    ];
    prop::collection::vec((0..SPAN, 0u8..3, 0u32..0x0100_0000, status, stored), 0..40).prop_map(
        |raw| {
            let mut by_id = BTreeMap::new();
            for (offset, unit, suffix, status, stored) in raw {
                let id = format!(
                    "{}-valkey-{unit}-{suffix:06x}",
                    timefmt::compact(at(BASE + offset))
                );
                let stored_at = stored.map(|d| at(BASE + offset + d));
                by_id.insert(
                    BackupId::parse(&id).expect("well-formed id"),
                    (status, stored_at),
                );
            }
            by_id
                .into_iter()
                .map(|(id, (status, stored_at))| Listed {
                    id,
                    status,
                    stored_at,
                })
                .collect()
        },
    )
}

fn policy() -> impl Strategy<Value = Policy> {
    // Generated valid, not filtered: a filter's rejects abort a long run.
    let days = || prop_oneof![0.0f64..90.0, Just(0.0)];
    prop_oneof![
        (1u32..50, prop::option::of(days())).prop_map(|(n, d)| (Some(n), d)),
        days().prop_map(|d| (None, Some(d))),
    ]
    .prop_map(|(n, d)| Policy::new(n, d).expect("a valid policy"))
}

proptest! {
    /// Any numbers give a policy or a refusal, never a panic.
    #[test]
    fn retention_policy_arbitrary_numbers_never_panic(
        n in any::<Option<u32>>(),
        d in any::<Option<f64>>(),
    ) {
        if let Ok(p) = Policy::new(n, d) {
            prop_assert!(p.keep_last().is_some() || p.keep_days().is_some());
            prop_assert_ne!(p.keep_last(), Some(0));
        }
    }

    /// For any backups, policy and clock, against an oracle written from the rule (not
    /// from the code): one decision per backup, newest first by the id's time (the
    /// store's time when the id is more than an hour after it); the newest finished
    /// backup by the id's time and by the store's time are never deleted; a finished
    /// backup is kept exactly when among the N newest finished by either time, younger
    /// than `keep-days` by either, or the newest by either; `keep-last N` alone keeps at
    /// least min(N, finished) and at most 2N finished backups; failed ones under
    /// `keep-days` go exactly when older by both times; ids more than an hour ahead of or
    /// a day behind the store are flagged, no others; running and abandoned backups are
    /// never deleted.
    #[test]
    fn retention_select_keeps_its_promises(
        backups in backups(),
        policy in policy(),
        now_offset in -86_400i64..(SPAN + 120 * 86_400),
        shuffle in any::<prop::sample::Index>(),
    ) {
        let now = at(BASE + now_offset);
        let mut input = backups.clone();
        if !input.is_empty() {
            let k = shuffle.index(input.len());
            input.rotate_left(k);
        }
        let decisions = select(&input, &policy, now);

        // The oracle's two clocks, in whole seconds.
        let named = |b: &Listed| b.id.started_at().unix_timestamp();
        let store_t = |b: &Listed| b.stored_at.map_or(named(b), |s| s.unix_timestamp());
        let id_t = |b: &Listed| match b.stored_at {
            Some(s) if named(b) - s.unix_timestamp() > 3_600 => s.unix_timestamp(),
            _ => named(b),
        };
        let flagged = |b: &Listed| {
            b.stored_at.is_some_and(|s| {
                let off = named(b) - s.unix_timestamp();
                !(-86_400..=3_600).contains(&off)
            })
        };
        let mut expected: Vec<(i64, BackupId)> =
            backups.iter().map(|b| (id_t(b), b.id.clone())).collect();
        expected.sort_by(|a, b| b.cmp(a));
        let got: Vec<(i64, BackupId)> = decisions
            .iter()
            .map(|d| (d.at.unix_timestamp(), d.id.clone()))
            .collect();
        prop_assert_eq!(got, expected);

        let finished: Vec<&Listed> =
            backups.iter().filter(|b| b.status == BackupStatus::Finished).collect();
        let newest_by = |key: &dyn Fn(&Listed) -> i64, n: usize| -> Vec<BackupId> {
            let mut v: Vec<(i64, &BackupId)> = finished.iter().map(|b| (key(b), &b.id)).collect();
            v.sort_by(|a, b| b.cmp(a));
            v.into_iter().take(n).map(|(_, id)| id.clone()).collect()
        };
        let n = policy.keep_last().unwrap_or(0) as usize;
        let (top_id, top_store) = (newest_by(&id_t, n), newest_by(&store_t, n));
        let (first_id, first_store) = (newest_by(&id_t, 1), newest_by(&store_t, 1));
        let young = |t: i64| {
            policy
                .keep_days()
                .is_some_and(|d| ((now.unix_timestamp() - t) as f64) < d * 86_400.0)
        };
        let by_id: BTreeMap<&BackupId, &Listed> = backups.iter().map(|b| (&b.id, b)).collect();
        let mut kept_finished = 0usize;
        for d in &decisions {
            let b = by_id[&d.id];
            let kept = matches!(d.verdict, Verdict::Keep(_));
            prop_assert_eq!(d.status, b.status);
            prop_assert_eq!(d.stored.unix_timestamp(), store_t(b));
            prop_assert_eq!(d.warning.is_some(), flagged(b), "{:?}", d);
            match b.status {
                BackupStatus::Running | BackupStatus::Abandoned => {
                    prop_assert!(kept, "deleted: {:?}", d);
                }
                BackupStatus::Finished => {
                    if kept {
                        kept_finished += 1;
                    }
                    if first_id.contains(&b.id) || first_store.contains(&b.id) {
                        prop_assert!(kept, "the newest finished by one clock deleted: {:?}", d);
                    }
                    let should = top_id.contains(&b.id)
                        || top_store.contains(&b.id)
                        || young(id_t(b))
                        || young(store_t(b))
                        || first_id.contains(&b.id)
                        || first_store.contains(&b.id);
                    prop_assert_eq!(kept, should, "{:?}", d);
                }
                _ => {
                    if policy.keep_days().is_some() {
                        prop_assert_eq!(kept, young(id_t(b)) || young(store_t(b)), "{:?}", d);
                    }
                }
            }
        }
        if let (Some(n), None) = (policy.keep_last(), policy.keep_days()) {
            let n = n as usize;
            prop_assert!(kept_finished >= n.min(finished.len()));
            prop_assert!(kept_finished <= 2 * n, "{} kept under keep-last {}", kept_finished, n);
        }
    }
}
