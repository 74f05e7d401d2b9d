//! Streaming validation of RDB snapshots.
//!
//! `valkey-cli --rdb -` writes a snapshot to stdout, and nothing about the bytes says
//! whether they are whole: a cli killed mid-transfer leaves a truncated stream, and a
//! server doing a diskless sync appends its 40-byte EOF marker, which the cli can strip
//! from a regular file (with `ftruncate`) but not from a pipe. So the validator checks
//! the whole stream, not just its first bytes:
//!
//! * the header (`REDIS` + 4 digits, or `VALKEY` + 3 digits) as soon as 9 bytes arrived,
//!   so that a stream that is not an RDB fails before anything is uploaded;
//! * the trailer at the end: opcode `0xFF` followed by the little-endian CRC-64/Jones of
//!   every earlier byte (the same CRC Valkey and Redis write).
//!
//! With the built-in replication source ([`crate::replication`]) the framing is known
//! exactly and the stream is the RDB and nothing else: [`RdbValidator::exact`] checks
//! that and never strips anything. The rest of this section is about the `cli` source.
//!
//! To strip the EOF marker without knowing in advance whether one is present, the
//! validator holds back the last [`HOLD_BACK`] bytes of the stream: bytes are released
//! downstream (and into the running CRC) only once it is certain they lie before the
//! trailer. [`RdbValidator::finish`] then decides between "ends in a valid trailer" and
//! "a valid trailer followed by 40 hex characters" — a match on a 64-bit CRC, so a wrong
//! guess is practically impossible — and returns the bytes that complete the RDB. The
//! bytes released plus the bytes returned by `finish` are exactly the RDB, byte for byte.
//!
//! This module does no I/O, so it is unit-tested byte by byte.

use crc_fast::{CrcAlgorithm, Digest as Crc64Digest};

/// A running CRC-64/Jones (reflected, as `crc64.c` in Valkey) — the CRC of RDB trailers.
/// `crc-fast` folds with carry-less multiplication (PCLMULQDQ/PMULL): the validator sits
/// on the streaming path, where a table-driven CRC cost about a CPU-second per GiB.
pub fn crc64_digest() -> Crc64Digest {
    Crc64Digest::new(CrcAlgorithm::Crc64Redis)
}

/// Length of the EOF marker a diskless sync appends (`RDB_EOF_MARK_SIZE`).
pub const EOF_MARK_LEN: usize = 40;
/// Opcode + 8-byte checksum.
const TRAILER_LEN: usize = 9;
/// What the validator keeps back until the end: trailer + a possible EOF marker.
pub const HOLD_BACK: usize = TRAILER_LEN + EOF_MARK_LEN;
const HEADER_LEN: usize = 9;
const OPCODE_EOF: u8 = 0xFF;

/// The snapshot's own format, read from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RdbFormat {
    /// `"REDIS"` or `"VALKEY"`.
    pub magic: &'static str,
    /// The RDB version number from the header.
    pub version: u16,
}

/// Why a stream is not an intact RDB. Messages are safe to show any user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RdbError {
    #[error("the stream is not an RDB snapshot: header {0:?} is neither REDIS+4 digits nor VALKEY+3 digits")]
    BadHeader(String),
    #[error("the stream ended after {0} bytes, too short to be an RDB snapshot")]
    TooShort(u64),
    #[error("the snapshot has no checksum (the server runs with rdbchecksum no); enable rdbchecksum to take verifiable backups")]
    ChecksumDisabled,
    #[error("the stream does not end in a valid RDB trailer (0xFF + CRC64): it is truncated, corrupted or padded ({0} bytes received)")]
    BadTrailer(u64),
}

/// Result of a successfully validated stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    /// The final bytes of the RDB, not yet released by `push`.
    pub tail: Vec<u8>,
    /// The CRC64 stored in (and matching) the trailer.
    pub crc64: u64,
    /// Size of the RDB itself (what is stored).
    pub rdb_bytes: u64,
    /// Whether a diskless-sync EOF marker followed the RDB and was dropped.
    pub eof_mark_stripped: bool,
    /// The header's format.
    pub format: RdbFormat,
}

/// Validates an RDB stream chunk by chunk; see the module docs.
#[derive(Clone)]
pub struct RdbValidator {
    header: [u8; HEADER_LEN],
    format: Option<RdbFormat>,
    received: u64,
    held: Vec<u8>,
    crc: Crc64Digest,
    /// Whether a trailing diskless EOF marker may be recognised and dropped (cli only).
    strip_eof_mark: bool,
}

impl Default for RdbValidator {
    fn default() -> Self {
        Self::new()
    }
}

impl RdbValidator {
    /// A validator at the start of a `valkey-cli --rdb -` stream, which may end in a
    /// diskless EOF marker the cli could not strip.
    pub fn new() -> Self {
        RdbValidator {
            header: [0; HEADER_LEN],
            format: None,
            received: 0,
            held: Vec::with_capacity(HOLD_BACK * 2),
            crc: crc64_digest(),
            strip_eof_mark: true,
        }
    }

    /// A validator for a stream that is exactly the RDB (the built-in source frames it):
    /// anything after the trailer is an error, nothing is stripped.
    pub fn exact() -> Self {
        RdbValidator {
            strip_eof_mark: false,
            ..Self::new()
        }
    }

    /// Feeds the next chunk. `release` is called (at most twice) with the bytes that are
    /// now known to precede the trailer, in order; they are the RDB's bytes and may be
    /// uploaded: first bytes held back from earlier chunks, then a prefix of `chunk`
    /// itself (a slice of it, so a caller can write it from its own buffer). Fails as
    /// soon as the header is known to be wrong.
    pub fn push(&mut self, chunk: &[u8], mut release: impl FnMut(&[u8])) -> Result<(), RdbError> {
        if self.format.is_none() {
            let start = self.received as usize;
            let take = (HEADER_LEN - start).min(chunk.len());
            self.header[start..start + take].copy_from_slice(&chunk[..take]);
            if start + take == HEADER_LEN {
                self.format = Some(parse_header(&self.header)?);
            }
        }
        self.received += chunk.len() as u64;

        let total = self.held.len() + chunk.len();
        if total <= HOLD_BACK {
            self.held.extend_from_slice(chunk);
            return Ok(());
        }
        // Release everything but the last HOLD_BACK bytes of held ++ chunk.
        let mut to_release = total - HOLD_BACK;
        let from_held = to_release.min(self.held.len());
        if from_held > 0 {
            self.crc.update(&self.held[..from_held]);
            release(&self.held[..from_held]);
            self.held.drain(..from_held);
            to_release -= from_held;
        }
        if to_release > 0 {
            self.crc.update(&chunk[..to_release]);
            release(&chunk[..to_release]);
        }
        self.held.extend_from_slice(&chunk[to_release..]);
        debug_assert!(self.held.len() <= HOLD_BACK);
        Ok(())
    }

    /// Ends the stream: checks the trailer and returns the RDB's last bytes.
    pub fn finish(self) -> Result<Validated, RdbError> {
        let format = match self.format {
            Some(f) if self.received >= (HEADER_LEN + TRAILER_LEN) as u64 => f,
            _ => return Err(RdbError::TooShort(self.received)),
        };
        let held = &self.held;
        let n = held.len();

        // Case 1: the stream ends in the trailer itself.
        if n >= TRAILER_LEN {
            let body_end = n - 8;
            let stored = u64::from_le_bytes(held[body_end..].try_into().expect("8 bytes"));
            if held[n - TRAILER_LEN] == OPCODE_EOF {
                let mut crc = self.crc;
                crc.update(&held[..body_end]);
                if crc.finalize() == stored {
                    return Ok(Validated {
                        tail: held.clone(),
                        crc64: stored,
                        rdb_bytes: self.received,
                        eof_mark_stripped: false,
                        format,
                    });
                }
            }
        }
        // Case 2: trailer followed by a diskless-sync EOF marker (40 hex characters).
        if self.strip_eof_mark && n == HOLD_BACK && self.received >= (HEADER_LEN + HOLD_BACK) as u64
        {
            let mark = &held[TRAILER_LEN..];
            let stored = u64::from_le_bytes(held[1..TRAILER_LEN].try_into().expect("8 bytes"));
            if held[0] == OPCODE_EOF && mark.iter().all(|b| b.is_ascii_hexdigit()) {
                let mut crc = self.crc;
                crc.update(&held[..1]);
                if crc.finalize() == stored {
                    return Ok(Validated {
                        tail: held[..TRAILER_LEN].to_vec(),
                        crc64: stored,
                        rdb_bytes: self.received - EOF_MARK_LEN as u64,
                        eof_mark_stripped: true,
                        format,
                    });
                }
                if stored == 0 {
                    return Err(RdbError::ChecksumDisabled);
                }
            }
        }
        if n >= TRAILER_LEN
            && held[n - TRAILER_LEN] == OPCODE_EOF
            && held[n - 8..].iter().all(|b| *b == 0)
        {
            return Err(RdbError::ChecksumDisabled);
        }
        Err(RdbError::BadTrailer(self.received))
    }
}

/// Parses `REDIS0011` / `VALKEY080` style headers.
pub fn parse_header(h: &[u8; HEADER_LEN]) -> Result<RdbFormat, RdbError> {
    let digits = |b: &[u8]| b.iter().all(u8::is_ascii_digit);
    let number = |b: &[u8]| -> u16 { b.iter().fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0')) };
    if &h[..5] == b"REDIS" && digits(&h[5..]) {
        return Ok(RdbFormat {
            magic: "REDIS",
            version: number(&h[5..]),
        });
    }
    if &h[..6] == b"VALKEY" && digits(&h[6..]) {
        return Ok(RdbFormat {
            magic: "VALKEY",
            version: number(&h[6..]),
        });
    }
    let shown: String = h
        .iter()
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' })
        .collect();
    Err(RdbError::BadHeader(shown))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table-driven `crc` crate as an independent reference.
    static REFERENCE: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_REDIS);

    /// A minimal but real-shaped RDB: header, an aux field, a key, EOF, CRC.
    fn rdb(magic: &[u8], body_len: usize) -> Vec<u8> {
        let mut v = magic.to_vec();
        v.extend_from_slice(&[0xFA, 3, b'f', b'o', b'o', 3, b'b', b'a', b'r', 0xFE, 0x00]);
        for i in 0..body_len {
            v.push((i * 31 % 251) as u8);
        }
        v.push(OPCODE_EOF);
        let crc = REFERENCE.checksum(&v);
        v.extend_from_slice(&crc.to_le_bytes());
        v
    }

    /// Runs a stream through the validator in chunks of `chunk`, returning what would be
    /// stored.
    fn run(stream: &[u8], chunk: usize) -> Result<(Vec<u8>, Validated), RdbError> {
        let mut v = RdbValidator::new();
        let mut out = Vec::new();
        for c in stream.chunks(chunk.max(1)) {
            v.push(c, |b| out.extend_from_slice(b))?;
        }
        let done = v.finish()?;
        out.extend_from_slice(&done.tail);
        Ok((out, done))
    }

    #[test]
    fn intact_stream_is_released_byte_for_byte_for_every_chunking() {
        for body in [0usize, 1, 30, 40, 41, 100, 5000] {
            let s = rdb(b"REDIS0011", body);
            for chunk in [1, 2, 7, 9, 48, 49, 50, 64, 4096] {
                let (out, done) = run(&s, chunk).unwrap();
                assert_eq!(out, s, "body {body} chunk {chunk}");
                assert_eq!(done.rdb_bytes, s.len() as u64);
                assert!(!done.eof_mark_stripped);
                assert_eq!(
                    done.crc64,
                    u64::from_le_bytes(s[s.len() - 8..].try_into().unwrap())
                );
            }
        }
    }

    #[test]
    fn diskless_eof_marker_is_stripped() {
        for body in [0usize, 3, 100, 5000] {
            let s = rdb(b"VALKEY080", body);
            let mut padded = s.clone();
            padded.extend_from_slice(b"0123456789abcdef0123456789abcdef01234567");
            for chunk in [1, 5, 49, 50, 4096] {
                let (out, done) = run(&padded, chunk).unwrap();
                assert_eq!(out, s, "body {body} chunk {chunk}");
                assert!(done.eof_mark_stripped);
                assert_eq!(
                    done.format,
                    RdbFormat {
                        magic: "VALKEY",
                        version: 80
                    }
                );
            }
        }
    }

    #[test]
    fn exact_streams_never_strip_a_marker() {
        let s = rdb(b"VALKEY080", 100);
        let mut v = RdbValidator::exact();
        let mut out = Vec::new();
        v.push(&s, |b| out.extend_from_slice(b)).unwrap();
        let done = v.finish().unwrap();
        out.extend_from_slice(&done.tail);
        assert_eq!(out, s);
        let mut padded = s.clone();
        padded.extend_from_slice(b"0123456789abcdef0123456789abcdef01234567");
        let mut v = RdbValidator::exact();
        v.push(&padded, |_| ()).unwrap();
        assert!(matches!(v.finish(), Err(RdbError::BadTrailer(_))));
    }

    #[test]
    fn every_format_a_supported_server_sends_is_accepted() {
        for (magic, format) in [
            (&b"REDIS0009"[..], ("REDIS", 9)),
            (b"REDIS0010", ("REDIS", 10)),
            (b"REDIS0011", ("REDIS", 11)),
            (b"REDIS0012", ("REDIS", 12)),
            (b"VALKEY080", ("VALKEY", 80)),
            (b"VALKEY081", ("VALKEY", 81)),
        ] {
            let s = rdb(magic, 50);
            let (_, done) = run(&s, 64).unwrap();
            assert_eq!((done.format.magic, done.format.version), format);
        }
    }

    #[test]
    fn truncated_stream_is_rejected_at_every_length() {
        let s = rdb(b"REDIS0010", 300);
        for cut in 0..s.len() {
            let r = run(&s[..cut], 17);
            assert!(r.is_err(), "accepted a stream cut at {cut}");
        }
    }

    #[test]
    fn every_single_byte_flip_is_rejected() {
        let s = rdb(b"REDIS0011", 200);
        for i in 0..s.len() {
            let mut bad = s.clone();
            bad[i] ^= 0x01;
            assert!(run(&bad, 64).is_err(), "accepted a flip at {i}");
        }
    }

    #[test]
    fn padding_after_the_trailer_is_rejected() {
        let s = rdb(b"REDIS0011", 200);
        for pad in [
            &b"\n"[..],
            b"\0\0\0\0",
            &[b'a'; 39],
            &[b'a'; 41],
            &[b'x'; 40],
        ] {
            let mut bad = s.clone();
            bad.extend_from_slice(pad);
            assert!(
                matches!(run(&bad, 64), Err(RdbError::BadTrailer(_))),
                "pad {pad:?}"
            );
        }
    }

    #[test]
    fn non_rdb_is_rejected_before_anything_is_released() {
        let mut v = RdbValidator::new();
        let mut released = 0;
        let err = v
            .push(
                b"-ERR unknown command 'SYNC'\r\n and more bytes to fill the hold-back window....",
                |b| released += b.len(),
            )
            .unwrap_err();
        assert!(matches!(err, RdbError::BadHeader(_)), "{err}");
        assert_eq!(released, 0);
        let mut v = RdbValidator::new();
        assert!(v.push(b"REDIS01x1", |_| ()).is_err());
        let mut v = RdbValidator::new();
        assert!(
            v.push(b"VALKEY0801", |_| ()).is_ok(),
            "10th byte is data, not header"
        );
    }

    #[test]
    fn empty_and_tiny_streams_are_too_short() {
        assert_eq!(run(b"", 1).unwrap_err(), RdbError::TooShort(0));
        assert_eq!(run(b"REDIS0011", 1).unwrap_err(), RdbError::TooShort(9));
    }

    #[test]
    fn disabled_checksum_gets_its_own_error() {
        let mut s = rdb(b"REDIS0011", 10);
        let n = s.len();
        s[n - 8..].fill(0);
        assert_eq!(run(&s, 64).unwrap_err(), RdbError::ChecksumDisabled);
    }

    #[test]
    fn crc_matches_the_reference_check_value_and_the_table_driven_crc() {
        // CRC-64/Jones as used by Redis: crc64(0, "123456789") == 0xe9c6d914c4b8d9ca.
        let mut d = crc64_digest();
        d.update(b"123456789");
        assert_eq!(d.finalize(), 0xe9c6d914c4b8d9ca);
        // The SIMD implementation agrees with the plain table one on odd lengths and
        // split updates.
        let data: Vec<u8> = (0..100_003u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for split in [0, 1, 15, 16, 17, 4096, 99_999] {
            let mut d = crc64_digest();
            d.update(&data[..split]);
            d.update(&data[split..]);
            assert_eq!(d.finalize(), REFERENCE.checksum(&data), "split {split}");
        }
    }
}
