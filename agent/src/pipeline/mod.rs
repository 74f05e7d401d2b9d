//! The one byte pipeline: every snapshot the agent moves passes the same checks.
//!
//! A backup (cli or replication stream → store), a verify (store → nowhere or a scratch
//! file) and a restore (store → file beside the server's dump) all read an RDB through
//! [`check_stream`]: each chunk goes through the [`RdbChecker`] — the streaming
//! [`RdbValidator`] (header first, trailer and CRC64 at the end), SHA-256 and a byte
//! count — and only bytes the validator has released reach the [`RdbSink`]. The sink
//! decides what "writing" means: a [`PartWriter`] cuts parts and applies backpressure,
//! a file is written in order, [`Discard`] only counts.
//!
//! The input is any [`AsyncRead`], plus an end-of-stream hook that runs when the reader
//! ends and before the trailer's verdict is used (a cli's exit status says more about
//! a failure than "truncated stream"). A stall timeout and a cancellation token bound
//! every read and every write.

pub mod decode;
pub mod encode;
pub mod file_sink;
pub mod ranged;

pub use ranged::{ranged_body, RANGES_IN_FLIGHT, RANGE_BYTES};

use std::future::Future;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::error::OpError;
use crate::rdb::{RdbError, RdbFormat, RdbValidator};
use crate::storage::{PartWriter, StoreError};

/// Read size from the source: large, so that a fast source costs few reads and wake-ups
/// (a socket or pipe read returns what is there; the buffer bounds it).
pub const READ_BUF: usize = 512 * 1024;

/// What a whole, valid RDB stream proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedRdb {
    /// Size of the RDB itself (what is stored; a stripped EOF marker is not counted).
    pub rdb_bytes: u64,
    /// Hex SHA-256 of exactly those bytes; empty when the sink hashed them itself
    /// ([`RdbSink::hashes_input`]), whose digest is then the stream's.
    pub sha256: String,
    /// The CRC64 stored in (and matching) the trailer.
    pub crc64: u64,
    /// The header's format.
    pub format: RdbFormat,
    /// Whether a diskless-sync EOF marker followed the trailer and was dropped.
    pub eof_mark_stripped: bool,
}

/// The validator, SHA-256 and the byte count, fed together.
pub struct RdbChecker {
    validator: RdbValidator,
    /// `None` when the sink hashes the stream (off the reading task).
    sha: Option<Sha256>,
    received: u64,
}

impl Default for RdbChecker {
    fn default() -> Self {
        Self::new()
    }
}

impl RdbChecker {
    /// A checker at the start of a stream that may end in a diskless EOF marker.
    pub fn new() -> Self {
        Self::with(RdbValidator::new())
    }

    /// A checker for a stream framed exactly (nothing may follow the RDB's trailer).
    pub fn exact() -> Self {
        Self::with(RdbValidator::exact())
    }

    fn with(validator: RdbValidator) -> Self {
        RdbChecker {
            validator,
            sha: Some(Sha256::new()),
            received: 0,
        }
    }

    /// Leaves the SHA-256 to the sink (its [`CheckedRdb::sha256`] stays empty).
    pub fn without_sha256(mut self) -> Self {
        self.sha = None;
        self
    }

    /// Feeds a chunk; `release` gets the bytes now known to belong to the RDB (already
    /// hashed), in order. Fails as soon as the header is known to be wrong.
    pub fn push(&mut self, chunk: &[u8], mut release: impl FnMut(&[u8])) -> Result<(), RdbError> {
        self.received += chunk.len() as u64;
        match &mut self.sha {
            Some(sha) => self.validator.push(chunk, |r| {
                sha.update(r);
                release(r);
            }),
            None => self.validator.push(chunk, release),
        }
    }

    /// Bytes received so far (EOF marker included).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Ends the stream: the RDB's last bytes (hashed, not yet released) and what the
    /// stream proved.
    pub fn finish(self) -> Result<(Vec<u8>, CheckedRdb), RdbError> {
        let v = self.validator.finish()?;
        let sha256 = match self.sha {
            Some(mut sha) => {
                sha.update(&v.tail);
                hex::encode(sha.finalize())
            }
            None => String::new(),
        };
        Ok((
            v.tail,
            CheckedRdb {
                rdb_bytes: v.rdb_bytes,
                sha256,
                crc64: v.crc64,
                format: v.format,
                eof_mark_stripped: v.eof_mark_stripped,
            },
        ))
    }
}

/// Where released RDB bytes go.
#[async_trait::async_trait]
pub trait RdbSink: Send {
    /// Takes the next bytes, in stream order.
    async fn write(&mut self, bytes: &[u8]) -> Result<(), OpError>;
    /// Parts uploaded so far, for progress (sinks that upload).
    fn parts_done(&self) -> Option<u64> {
        None
    }
    /// Whether the sink computes the SHA-256 of exactly the bytes it is given, so the
    /// reading task need not (a part writer hashes whole parts on a thread of its own).
    fn hashes_input(&self) -> bool {
        false
    }
    /// The SHA-256 of every byte given, once the last was (sinks that
    /// [`RdbSink::hashes_input`] and are not a part writer, whose digest comes with its
    /// upload).
    async fn input_sha256(&mut self) -> Result<Option<String>, OpError> {
        Ok(None)
    }
    /// Where the next bytes may be read to in place, and how many fit (at least one):
    /// the bytes read are then taken with [`RdbSink::direct_commit`] instead of
    /// [`RdbSink::write`]. `None`: the sink only takes bytes through `write`.
    fn direct_buffer(&mut self) -> Option<(&mut bytes::BytesMut, usize)> {
        None
    }
    /// Takes the bytes read into [`RdbSink::direct_buffer`] since the last call.
    async fn direct_commit(&mut self) -> Result<(), OpError> {
        Ok(())
    }
}

/// A sink that keeps nothing (verify without `load`).
pub struct Discard;

#[async_trait::async_trait]
impl RdbSink for Discard {
    async fn write(&mut self, _bytes: &[u8]) -> Result<(), OpError> {
        Ok(())
    }
}

#[async_trait::async_trait]
impl RdbSink for PartWriter {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), OpError> {
        PartWriter::write(self, bytes).await.map_err(OpError::from)
    }
    fn parts_done(&self) -> Option<u64> {
        Some(PartWriter::parts_done(self))
    }
    fn hashes_input(&self) -> bool {
        self.hashes()
    }
    fn direct_buffer(&mut self) -> Option<(&mut bytes::BytesMut, usize)> {
        Some(self.part_buffer())
    }
    async fn direct_commit(&mut self) -> Result<(), OpError> {
        self.commit_part_buffer().await.map_err(OpError::from)
    }
}

#[async_trait::async_trait]
impl RdbSink for tokio::fs::File {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), OpError> {
        self.write_all(bytes)
            .await
            .map_err(|e| OpError::LocalIo(format!("writing the snapshot file: {}", e.kind())))
    }
}

/// A restore's file: written, hashed and written back on a thread of its own.
#[async_trait::async_trait]
impl RdbSink for file_sink::DurableFile {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), OpError> {
        file_sink::DurableFile::write(self, bytes).await
    }
    fn hashes_input(&self) -> bool {
        true
    }
    async fn input_sha256(&mut self) -> Result<Option<String>, OpError> {
        Ok(Some(self.sha256().await?))
    }
}

/// A sink that encodes before handing bytes on to `sink` (the part writer).
pub struct Encoded<'a, S: RdbSink + ?Sized> {
    pub encoder: &'a mut encode::Encoder,
    pub sink: &'a mut S,
}

#[async_trait::async_trait]
impl<S: RdbSink + ?Sized> RdbSink for Encoded<'_, S> {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), OpError> {
        if self.encoder.is_plain() {
            return self.sink.write(bytes).await;
        }
        let out = self.encoder.encode(bytes).await?;
        if out.is_empty() {
            return Ok(());
        }
        self.sink.write(&out).await
    }
    fn parts_done(&self) -> Option<u64> {
        self.sink.parts_done()
    }
    fn hashes_input(&self) -> bool {
        self.encoder.is_plain() && self.sink.hashes_input()
    }
    fn direct_buffer(&mut self) -> Option<(&mut bytes::BytesMut, usize)> {
        if !self.encoder.is_plain() {
            return None;
        }
        self.sink.direct_buffer()
    }
    async fn direct_commit(&mut self) -> Result<(), OpError> {
        self.sink.direct_commit().await
    }
}

/// How a stream is watched.
pub struct StreamLimits<'a> {
    /// Longest wait for the next bytes (`None`: the transport's own timeouts apply).
    pub stall: Option<Duration>,
    /// What the bytes come from, as messages name it ("the cli").
    pub source_name: &'static str,
    /// The stream is framed exactly: no diskless EOF marker may follow the RDB.
    pub exact: bool,
    pub cancel: &'a CancellationToken,
}

/// The outcome of reading a stream to its end.
#[derive(Debug)]
pub struct Streamed {
    /// Bytes read from the source.
    pub received: u64,
    /// The trailer's verdict; when valid, every RDB byte reached the sink.
    pub rdb: Result<CheckedRdb, RdbError>,
}

/// Reads `reader` to its end through an [`RdbChecker`] into `sink`; see the module docs.
///
/// Errors: a bad header (as soon as it is seen), a read failure, a stall, cancellation,
/// the sink's own errors, and the end-of-stream hook's. The trailer's verdict comes back
/// in [`Streamed::rdb`] so the caller orders its checks (a verify reports a wrong size
/// before a bad trailer).
pub async fn check_stream<R, S, E, F>(
    mut reader: R,
    sink: &mut S,
    end_of_stream: E,
    limits: StreamLimits<'_>,
    mut progress: impl FnMut(u64, Option<u64>) + Send,
) -> Result<Streamed, OpError>
where
    R: AsyncRead + Unpin + Send,
    S: RdbSink + ?Sized,
    E: FnOnce() -> F + Send,
    F: Future<Output = Result<(), OpError>> + Send,
{
    let cancel = limits.cancel;
    let mut checker = if limits.exact {
        RdbChecker::exact()
    } else {
        RdbChecker::new()
    };
    if sink.hashes_input() {
        checker = checker.without_sha256();
    }
    let mut buf = vec![0u8; READ_BUF];
    // The validator releases at most two slices per read: some of the bytes it held back
    // (copied here, at most HOLD_BACK) and a prefix of the read itself (written straight
    // from the read buffer, not copied).
    let mut from_held: Vec<u8> = Vec::with_capacity(crate::rdb::HOLD_BACK);
    // An exact stream is the RDB and nothing else: nothing will be stripped, so its bytes
    // can be read straight into the sink's part buffer (no copy at all), the validator
    // only looking at them there before the part may leave.
    let in_place = limits.exact && sink.direct_buffer().is_some();
    if in_place {
        loop {
            let (part, room) = sink.direct_buffer().expect("checked above");
            let before = part.len();
            let mut limited = bytes::BufMut::limit(&mut *part, room);
            let n = watched_read(&limits, reader.read_buf(&mut limited)).await?;
            if n == 0 {
                break;
            }
            // The header is checked here, before the part can be handed to an upload.
            checker.push(&part[before..before + n], |_| {})?;
            tokio::select! {
                _ = cancel.cancelled() => return Err(OpError::Cancelled),
                r = sink.direct_commit() => r?,
            }
            progress(checker.received(), sink.parts_done());
        }
    } else {
        loop {
            let n = watched_read(&limits, reader.read(&mut buf)).await?;
            if n == 0 {
                break;
            }
            let chunk = &buf[..n];
            let mut direct = 0;
            from_held.clear();
            checker.push(chunk, |r| {
                if std::ptr::eq(r.as_ptr(), chunk.as_ptr()) {
                    direct = r.len();
                } else {
                    from_held.extend_from_slice(r);
                }
            })?;
            for released in [&from_held[..], &buf[..direct]] {
                if released.is_empty() {
                    continue;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return Err(OpError::Cancelled),
                    r = sink.write(released) => r?,
                }
            }
            progress(checker.received(), sink.parts_done());
        }
    }
    drop(reader);
    let received = checker.received();
    let finished = checker.finish();
    tokio::select! {
        _ = cancel.cancelled() => return Err(OpError::Cancelled),
        r = end_of_stream() => r?,
    }
    let rdb = match finished {
        // Read in place, the tail is in the sink already.
        Ok((_, checked)) if in_place => Ok(checked),
        Ok((tail, checked)) => {
            tokio::select! {
                _ = cancel.cancelled() => return Err(OpError::Cancelled),
                r = sink.write(&tail) => r?,
            }
            Ok(checked)
        }
        Err(e) => Err(e),
    };
    Ok(Streamed { received, rdb })
}

/// A read error: a store's own (carried through [`std::io::Error`] by
/// [`store_reader`]) stays classified, as does a decoding stage's verdict
/// ([`decode::decoded_reader`]); anything else is the local pipe failing.
/// One read of the source, raced against cancellation and bounded by the stall limit:
/// the only place a stream read waits, whichever buffer it reads into.
async fn watched_read(
    limits: &StreamLimits<'_>,
    read: impl Future<Output = std::io::Result<usize>>,
) -> Result<usize, OpError> {
    let bounded = async {
        match limits.stall {
            Some(stall) => {
                tokio::time::timeout(stall, read)
                    .await
                    .map_err(|_| OpError::Stalled {
                        source_name: limits.source_name,
                        seconds: stall.as_secs(),
                    })?
            }
            None => read.await,
        }
        .map_err(read_error)
    };
    tokio::select! {
        _ = limits.cancel.cancelled() => Err(OpError::Cancelled),
        r = bounded => r,
    }
}

fn read_error(e: std::io::Error) -> OpError {
    if e.get_ref().is_some_and(|i| i.is::<OpError>()) {
        let inner = e.into_inner().expect("checked above");
        return *inner.downcast::<OpError>().expect("checked above");
    }
    if let Some(store) = e.get_ref().and_then(|i| i.downcast_ref::<StoreError>()) {
        return OpError::Store(store.clone());
    }
    if let Some(valkey) = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<crate::valkey::ValkeyError>())
    {
        return OpError::Valkey(valkey.clone());
    }
    OpError::LocalIo(format!("reading the snapshot stream: {}", e.kind()))
}

/// An object's body as an [`AsyncRead`] for [`check_stream`].
pub fn store_reader<'a>(
    body: futures::stream::BoxStream<'a, Result<bytes::Bytes, StoreError>>,
) -> impl AsyncRead + Unpin + Send + 'a {
    use futures::StreamExt;
    tokio_util::io::StreamReader::new(body.map(|r| r.map_err(std::io::Error::other)))
}

/// What the pipeline's tests share: RDBs built in memory, a sink that keeps every byte,
/// and the limits a test stream runs under.
#[cfg(test)]
pub(crate) mod testing {
    use tokio_util::sync::CancellationToken;

    use super::{RdbSink, StreamLimits};
    use crate::error::OpError;
    use crate::rdb::crc64_digest;

    /// `body` as a valid RDB: a `REDIS0011` header before it, `0xFF` and the CRC64 of all
    /// before after it.
    pub fn rdb_around(body: impl IntoIterator<Item = u8>) -> Vec<u8> {
        let mut v = b"REDIS0011".to_vec();
        v.extend(body);
        v.push(0xFF);
        let mut crc = crc64_digest();
        crc.update(&v);
        v.extend_from_slice(&crc.finalize().to_le_bytes());
        v
    }

    /// A valid RDB with `body_len` bytes between header and trailer.
    pub fn rdb(body_len: usize) -> Vec<u8> {
        rdb_around((0..body_len).map(|i| (i % 251) as u8 & 0x7f))
    }

    /// A sink that keeps every byte it is given.
    #[derive(Default)]
    pub struct Collect(pub Vec<u8>);

    #[async_trait::async_trait]
    impl RdbSink for Collect {
        async fn write(&mut self, bytes: &[u8]) -> Result<(), OpError> {
            self.0.extend_from_slice(bytes);
            Ok(())
        }
    }

    /// [`check_stream`](super::check_stream) with nothing to do at the end of the stream
    /// and no progress reports.
    pub async fn check<R, S>(
        reader: R,
        sink: &mut S,
        limits: StreamLimits<'_>,
    ) -> Result<super::Streamed, OpError>
    where
        R: tokio::io::AsyncRead + Unpin + Send,
        S: RdbSink + ?Sized,
    {
        super::check_stream(reader, sink, || async { Ok(()) }, limits, |_, _| {}).await
    }

    /// No stall bound, cancelled by `cancel`; `exact` as the source's framing is.
    pub fn stream_limits(cancel: &CancellationToken, exact: bool) -> StreamLimits<'_> {
        StreamLimits {
            stall: None,
            source_name: "a test",
            exact,
            cancel,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{check, rdb, stream_limits, Collect};
    use super::*;

    #[tokio::test]
    async fn an_exact_stream_is_read_into_the_parts_in_place_and_hashed_by_the_writer() {
        use crate::storage::memory::InMemory;
        const MIB: usize = 1024 * 1024;
        let data = rdb(11 * MIB); // stores refuse parts under 5 MiB but the last
        let store = std::sync::Arc::new(InMemory::default());
        let dyn_store: crate::storage::DynStore = store.clone();
        let mut writer = PartWriter::new(dyn_store.clone(), "k".into(), "x", 5 * MIB, 2)
            .with_sha256()
            .unwrap();
        assert!(RdbSink::direct_buffer(&mut writer).is_some());
        let cancel = CancellationToken::new();
        let limits = stream_limits(&cancel, true);
        let out = check(&data[..], &mut writer, limits).await.unwrap();
        let checked = out.rdb.unwrap();
        assert_eq!(
            checked.sha256, "",
            "the writer hashed it, not the reading task"
        );
        let uploaded = writer.finish().await.unwrap();
        assert_eq!(uploaded.parts, 3);
        assert_eq!(uploaded.sha256.unwrap(), hex::encode(Sha256::digest(&data)));
        assert_eq!(store.object("k").unwrap(), data);

        // Not an RDB: refused before a single part was uploaded.
        let mut writer = PartWriter::new(dyn_store, "bad".into(), "x", 16, 2);
        let limits = stream_limits(&cancel, true);
        let junk = b"HELLO WORLD, not an rdb at all, long enough for two parts";
        let err = check(&junk[..], &mut writer, limits).await.unwrap_err();
        assert!(matches!(err, OpError::Stream(RdbError::BadHeader(_))));
        assert!(store.open_uploads().is_empty() && store.object("bad").is_none());
    }

    #[tokio::test]
    async fn the_sink_gets_exactly_the_rdb_and_its_hash() {
        let data = rdb(300_000);
        let mut sink = Collect(Vec::new());
        let cancel = CancellationToken::new();
        let limits = stream_limits(&cancel, false);
        let out = check(&data[..], &mut sink, limits).await.unwrap();
        let checked = out.rdb.unwrap();
        assert_eq!(sink.0, data);
        assert_eq!(checked.rdb_bytes, data.len() as u64);
        assert_eq!(checked.sha256, hex::encode(Sha256::digest(&data)));
    }

    #[tokio::test]
    async fn a_failing_end_check_wins_over_a_truncated_trailer() {
        let data = rdb(1000);
        let cancel = CancellationToken::new();
        let limits = stream_limits(&cancel, false);
        let err = check_stream(
            &data[..500],
            &mut Discard,
            || async { Err(OpError::Internal("cli exit 1".into())) },
            limits,
            |_, _| {},
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("cli exit 1"), "{err}");
    }

    #[tokio::test]
    async fn a_bad_header_fails_before_anything_is_written() {
        let mut sink = Collect(Vec::new());
        let cancel = CancellationToken::new();
        let limits = stream_limits(&cancel, false);
        let err = check_stream(
            &b"HELLO WORLD, not an rdb at all"[..],
            &mut sink,
            || async { Ok(()) },
            limits,
            |_, _| {},
        )
        .await
        .unwrap_err();
        assert!(matches!(err, OpError::Stream(RdbError::BadHeader(_))));
        assert!(sink.0.is_empty());
    }
}
