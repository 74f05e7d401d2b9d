//! The restore/verify side's stages before validation: count and hash the stored bytes,
//! decrypt, decompress.
//!
//! The decoders are synchronous (`std::io::Read`) and CPU-bound, so they run on one
//! blocking-pool thread that reads the object's body through a bridge and sends the raw
//! RDB, in chunks, over a small bounded channel to the async side — which reads it like
//! any other stream and passes it through the same RDB checker a backup used. Memory: the
//! channel (4 chunks), the decoders' buffers and the Zstandard window (≤ 8 MiB).
//!
//! Every failure names its stage: the store's own errors stay store errors, an age
//! chunk that does not authenticate is [`Check::Decrypt`], a corrupt frame or checksum
//! is [`Check::Decompress`] — both `stream-invalid`.

use std::io::{self, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::AsyncRead;
use tokio::task::JoinHandle;

use super::encode::StoredStats;
use crate::codec::{self, Codec};
use crate::encrypt::{self, OpenError};
use crate::error::{Check, OpError};
use crate::storage::StoreError;

/// Size of the raw chunks the decoding thread hands on.
const CHUNK: usize = 128 * 1024;

/// Chunks in flight between the decoding thread and the checker.
const CHANNEL_CHUNKS: usize = 4;

/// Counts and hashes every byte read from the store, and keeps the store's own error.
struct Tally<R> {
    inner: R,
    sha: Sha256,
    bytes: u64,
    store_error: Option<StoreError>,
}

impl<R: Read> Read for Tally<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.sha.update(&buf[..n]);
                self.bytes += n as u64;
                Ok(n)
            }
            Err(e) => {
                if let Some(s) = e.get_ref().and_then(|i| i.downcast_ref::<StoreError>()) {
                    self.store_error = Some(s.clone());
                }
                Err(e)
            }
        }
    }
}

/// Marks errors of the reader it wraps (the age layer) so they can be told apart from
/// the decompressor's.
struct Marked<R> {
    inner: R,
    failed: Arc<AtomicBool>,
}

impl<R: Read> Read for Marked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|_| {
            self.failed.store(true, Ordering::Relaxed);
        })
    }
}

/// How a stored object is decoded.
pub struct Decoding {
    pub codec: Codec,
    /// The identities to open an encrypted object with (`None`: it is in clear).
    pub identities: Option<Vec<age::x25519::Identity>>,
}

/// Starts decoding `body` (the stored object) on a blocking thread. Returns the raw
/// RDB as an [`AsyncRead`] and the thread's handle, which yields the stored object's
/// size and SHA-256 once the reader has reached its end. A failure reaches the reader as
/// an I/O error carrying the [`OpError`] (see [`super::check_stream`]).
pub fn decoded_reader<B>(
    body: B,
    decoding: Decoding,
) -> (
    impl AsyncRead + Unpin + Send,
    JoinHandle<Result<StoredStats, OpError>>,
)
where
    B: AsyncRead + Unpin + Send + 'static,
{
    let bridge = tokio_util::io::SyncIoBridge::new(body);
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(CHANNEL_CHUNKS);
    let handle = tokio::task::spawn_blocking(move || {
        let mut tally = Tally {
            inner: bridge,
            sha: Sha256::new(),
            bytes: 0,
            store_error: None,
        };
        let age_failed = Arc::new(AtomicBool::new(false));
        let outcome = decode(&mut tally, &decoding, &age_failed, &tx).and_then(|()| {
            // Whatever follows the end of the encoded stream still counts as stored.
            io::copy(&mut tally, &mut io::sink())
                .map(|_| ())
                .map_err(Stage::Read)
        });
        match outcome {
            Ok(()) => Ok(StoredStats {
                bytes: tally.bytes,
                sha256: hex::encode(tally.sha.finalize()),
            }),
            Err(Stage::ReaderGone) => Err(OpError::Cancelled),
            Err(stage) => {
                let err = classify(stage, tally.store_error.take(), &age_failed);
                let _ = tx.blocking_send(Err(io::Error::other(err)));
                Err(OpError::Internal("the decoding failed (reported)".into()))
            }
        }
    });
    let stream = tokio_stream_from(rx);
    (tokio_util::io::StreamReader::new(stream), handle)
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
) -> futures::stream::BoxStream<'static, io::Result<Bytes>> {
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// Where decoding stopped.
enum Stage {
    Open(OpenError),
    Read(io::Error),
    ReaderGone,
}

fn decode<R: Read + Send>(
    stored: &mut R,
    decoding: &Decoding,
    age_failed: &Arc<AtomicBool>,
    tx: &tokio::sync::mpsc::Sender<io::Result<Bytes>>,
) -> Result<(), Stage> {
    let buffered = BufReader::with_capacity(64 * 1024, stored);
    let plain: Box<dyn Read + Send + '_> = match &decoding.identities {
        Some(ids) => {
            let refs: Vec<&age::x25519::Identity> = ids.iter().collect();
            let opened = encrypt::open(buffered, &refs).map_err(Stage::Open)?;
            Box::new(Marked {
                inner: opened,
                failed: Arc::clone(age_failed),
            })
        }
        None => Box::new(buffered),
    };
    let mut raw = codec::decompressor(decoding.codec, BufReader::with_capacity(64 * 1024, plain))
        .map_err(Stage::Read)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = raw.read(&mut buf).map_err(Stage::Read)?;
        if n == 0 {
            return Ok(());
        }
        if tx
            .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
            .is_err()
        {
            return Err(Stage::ReaderGone);
        }
    }
}

fn classify(stage: Stage, store: Option<StoreError>, age_failed: &AtomicBool) -> OpError {
    if let Some(s) = store {
        return OpError::Store(s);
    }
    match stage {
        Stage::Open(OpenError::NoMatchingKey) => OpError::integrity(
            Check::Decrypt,
            "the age header does not open with the key its manifest names: the object was altered",
        ),
        Stage::Open(OpenError::Header(why)) => {
            OpError::integrity(Check::Decrypt, format!("the object's {why}"))
        }
        Stage::Open(OpenError::Io(e)) => OpError::integrity(
            Check::Decrypt,
            format!("the object's age header cannot be read ({})", e.kind()),
        ),
        Stage::Read(e) if age_failed.load(Ordering::Relaxed) => OpError::integrity(
            Check::Decrypt,
            format!(
                "the encrypted object does not authenticate ({}): a byte was changed, removed or added",
                e.kind()
            ),
        ),
        Stage::Read(e) => OpError::integrity(
            Check::Decompress,
            format!("the compressed object is corrupt: {e}"),
        ),
        Stage::ReaderGone => OpError::Cancelled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::encode::Encoder;
    use crate::pipeline::testing::{rdb_around, stream_limits};
    use crate::pipeline::{check_stream, store_reader, Discard};
    use tokio_util::sync::CancellationToken;

    fn rdb(records: usize) -> Vec<u8> {
        rdb_around(
            (0..records)
                .flat_map(|i| format!("{{\"k\":{i},\"v\":\"value-{}\"}}", i % 50).into_bytes()),
        )
    }

    async fn encode(
        data: &[u8],
        codec: Codec,
        id: &age::x25519::Identity,
    ) -> (Vec<u8>, StoredStats) {
        let mut enc = Encoder::new(codec, 3, &[id.to_public()]).unwrap();
        let mut out = Vec::new();
        for c in data.chunks(100_000) {
            out.extend(enc.encode(c).await.unwrap());
        }
        let (rest, stats) = enc.finish().await.unwrap();
        out.extend(rest);
        (out, stats.unwrap())
    }

    fn body(
        chunks: Vec<Result<Bytes, StoreError>>,
    ) -> futures::stream::BoxStream<'static, Result<Bytes, StoreError>> {
        Box::pin(futures::stream::iter(chunks))
    }

    async fn run(
        chunks: Vec<Result<Bytes, StoreError>>,
        codec: Codec,
        id: &age::x25519::Identity,
    ) -> Result<(u64, StoredStats), OpError> {
        let (reader, handle) = decoded_reader(
            store_reader(body(chunks)),
            Decoding {
                codec,
                identities: Some(vec![id.clone()]),
            },
        );
        let cancel = CancellationToken::new();
        let limits = stream_limits(&cancel, false);
        let streamed =
            check_stream(reader, &mut Discard, || async { Ok(()) }, limits, |_, _| {}).await?;
        let stats = handle.await.unwrap()?;
        streamed.rdb?;
        Ok((streamed.received, stats))
    }

    #[tokio::test]
    async fn the_decoder_gives_back_the_rdb_and_what_was_stored() {
        let id = age::x25519::Identity::generate();
        let data = rdb(50_000);
        let (stored, stats) = encode(&data, Codec::Zstd, &id).await;
        assert_eq!(stats.bytes, stored.len() as u64);
        let half = stored.len() / 2;
        let chunks = vec![
            Ok(Bytes::copy_from_slice(&stored[..half])),
            Ok(Bytes::copy_from_slice(&stored[half..])),
        ];
        let (raw, read) = run(chunks, Codec::Zstd, &id).await.unwrap();
        assert_eq!(raw, data.len() as u64);
        assert_eq!(read, stats);
    }

    #[tokio::test]
    async fn a_store_failure_mid_body_stays_a_store_error() {
        let id = age::x25519::Identity::generate();
        let (stored, _) = encode(&rdb(50_000), Codec::Lz4, &id).await;
        let chunks = vec![
            Ok(Bytes::copy_from_slice(&stored[..stored.len() / 2])),
            Err(StoreError::Unreachable {
                endpoint: "memory://".into(),
                detail: "connection reset".into(),
            }),
        ];
        let err = run(chunks, Codec::Lz4, &id).await.unwrap_err();
        assert!(
            matches!(err, OpError::Store(StoreError::Unreachable { .. })),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_truncated_encrypted_object_fails_authentication() {
        let id = age::x25519::Identity::generate();
        let (stored, _) = encode(&rdb(50_000), Codec::None, &id).await;
        let chunks = vec![Ok(Bytes::copy_from_slice(&stored[..stored.len() - 20]))];
        let err = run(chunks, Codec::None, &id).await.unwrap_err();
        assert!(
            matches!(
                err,
                OpError::Integrity {
                    check: Check::Decrypt,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
