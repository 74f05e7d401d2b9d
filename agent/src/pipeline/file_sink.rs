//! A file sink that writes, hashes and starts write-back on a thread of its own.
//!
//! A restore writes the downloaded RDB into a temporary file, checks its SHA-256 and
//! fsyncs it before it may replace the server's dump. Done on the reading task, each
//! chunk waited for its SHA-256 and for the previous write, and the whole download sat
//! dirty in the page cache until the fsync, which then waited for every byte to reach
//! the disk. [`DurableFile`] hands each chunk to a writer thread through a short queue
//! ([`QUEUE_CHUNKS`]): the thread hashes it, writes it through the descriptor (never a
//! path) and, every [`WRITEBACK_WINDOW`] bytes, asks the kernel to start writing that
//! window back (`sync_file_range` with `SYNC_FILE_RANGE_WRITE`, which starts the I/O
//! and does not wait), so the disk works beside the network and [`DurableFile::sync`]
//! waits for little more than the last window. The fsync stays the only durability
//! promise: the early write-back is advice, its errors left to the fsync to report.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

use crate::error::OpError;

/// Bytes written between two requests to start write-back.
pub const WRITEBACK_WINDOW: u64 = 8 * 1024 * 1024;
/// Bytes gathered before they go to the writer thread in one piece (the reader's pieces
/// can be a few KiB each; one hand-over per piece would cost more than the copy).
pub const BATCH: usize = 512 * 1024;
/// Batches waiting for the writer thread: enough to keep it busy while the reader
/// fetches the next, few enough to keep memory small.
pub const QUEUE_CHUNKS: usize = 4;

/// What the writer thread hands back when its queue closes.
struct Written {
    bytes: u64,
    sha256: String,
}

/// A file written in order by a thread of its own; see the module docs.
pub struct DurableFile {
    chunks: Option<tokio::sync::mpsc::Sender<Bytes>>,
    batch: BytesMut,
    done: Option<tokio::sync::oneshot::Receiver<std::io::Result<Written>>>,
    file: std::fs::File,
    written: Option<Written>,
    /// Set when the sink is dropped: the thread writes nothing more (a restore that gave
    /// up must not keep writing into the file it removes).
    stop: Arc<AtomicBool>,
}

impl Drop for DurableFile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl DurableFile {
    /// Writes to `file` (its descriptor, duplicated) from its current offset.
    pub fn new(file: &std::fs::File) -> std::io::Result<Self> {
        let (chunks, mut rx) = tokio::sync::mpsc::channel::<Bytes>(QUEUE_CHUNKS);
        let (tx, done) = tokio::sync::oneshot::channel();
        let mut out = file.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("file-writer".into())
            .spawn(move || {
                let mut sha = Sha256::new();
                let (mut bytes, mut requested) = (0u64, 0u64);
                let result = (|| {
                    while let Some(chunk) = rx.blocking_recv() {
                        if stopped.load(Ordering::Relaxed) {
                            break;
                        }
                        sha.update(&chunk);
                        out.write_all(&chunk)?;
                        bytes += chunk.len() as u64;
                        if bytes - requested >= WRITEBACK_WINDOW {
                            start_writeback(&out, requested, bytes - requested);
                            requested = bytes;
                        }
                    }
                    Ok(())
                })();
                let _ = tx.send(result.map(|()| Written {
                    bytes,
                    sha256: hex::encode(sha.finalize()),
                }));
            })?;
        Ok(DurableFile {
            chunks: Some(chunks),
            batch: BytesMut::with_capacity(BATCH),
            done: Some(done),
            file: file.try_clone()?,
            written: None,
            stop,
        })
    }

    /// Waits for the writer thread to write everything queued, and keeps its figures.
    async fn drain(&mut self) -> Result<&Written, OpError> {
        if self.written.is_none() {
            if !self.batch.is_empty() {
                self.send_batch().await?;
            }
            self.chunks = None;
            let Some(done) = self.done.take() else {
                return Err(OpError::Internal(
                    "the file writer stopped after an earlier error".into(),
                ));
            };
            let written = done
                .await
                .map_err(|_| OpError::Internal("the file writer thread ended".into()))?
                .map_err(write_error)?;
            self.written = Some(written);
        }
        Ok(self.written.as_ref().expect("set above"))
    }

    /// Bytes written, once everything queued is written.
    pub async fn written(&mut self) -> Result<u64, OpError> {
        Ok(self.drain().await?.bytes)
    }

    /// Makes every byte written durable (fsync), after the write-back already started.
    pub async fn sync(mut self) -> Result<(), OpError> {
        self.drain().await?;
        let file = self.file.try_clone().map_err(write_error)?;
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(|e| OpError::Internal(format!("fsync task: {e}")))?
            .map_err(write_error)
    }
}

fn write_error(e: std::io::Error) -> OpError {
    OpError::LocalIo(format!("writing the snapshot file: {}", e.kind()))
}

/// Asks the kernel to start writing `len` bytes at `from` to disk, without waiting.
fn start_writeback(file: &std::fs::File, from: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(from), Ok(len)) = (i64::try_from(from), i64::try_from(len)) else {
            return;
        };
        // SAFETY: sync_file_range reads only its integer arguments; `file` keeps the
        // descriptor open for the duration of the call. Its result is advice only: the
        // final fsync reports any write error.
        unsafe {
            nix::libc::sync_file_range(
                file.as_raw_fd(),
                from,
                len,
                nix::libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, from, len);
}

impl DurableFile {
    /// Hands the gathered bytes to the writer thread (waiting while its queue is full).
    /// Cancel-safe: the batch leaves `self` only once the queue has room for it.
    async fn send_batch(&mut self) -> Result<(), OpError> {
        let Some(chunks) = &self.chunks else {
            return Err(OpError::Internal("write after the file was drained".into()));
        };
        if let Ok(room) = chunks.reserve().await {
            room.send(std::mem::replace(&mut self.batch, BytesMut::with_capacity(BATCH)).freeze());
            return Ok(());
        }
        // The thread stopped: its write failed; say how.
        self.chunks = None;
        let Some(done) = self.done.take() else {
            return Err(OpError::Internal("the file writer thread ended".into()));
        };
        Err(match done.await {
            Ok(Err(e)) => write_error(e),
            _ => OpError::Internal("the file writer thread ended".into()),
        })
    }
}

impl DurableFile {
    /// Takes the next bytes, in order (the pipeline's sink; see `RdbSink`).
    pub async fn write(&mut self, mut bytes: &[u8]) -> Result<(), OpError> {
        while !bytes.is_empty() {
            let take = (BATCH - self.batch.len()).min(bytes.len());
            self.batch.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.batch.len() == BATCH {
                self.send_batch().await?;
            }
        }
        Ok(())
    }
    /// The SHA-256 of every byte written, once everything queued is written.
    pub async fn sha256(&mut self) -> Result<String, OpError> {
        Ok(self.drain().await?.sha256.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_byte_lands_in_order_hashed_and_survives_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let file = std::fs::File::create(&path).unwrap();
        let mut sink = DurableFile::new(&file).unwrap();
        let data: Vec<u8> = (0..3 * WRITEBACK_WINDOW + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        for chunk in data.chunks(700_001) {
            sink.write(chunk).await.unwrap();
        }
        assert_eq!(
            sink.sha256().await.unwrap(),
            hex::encode(Sha256::digest(&data))
        );
        assert_eq!(sink.written().await.unwrap(), data.len() as u64);
        sink.sync().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[tokio::test]
    async fn a_failing_write_is_reported_as_the_files() {
        // A file opened read-only: the thread's first write fails.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro");
        std::fs::write(&path, b"").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let mut sink = DurableFile::new(&file).unwrap();
        let mut failed = None;
        for _ in 0..2 * QUEUE_CHUNKS + 2 {
            if let Err(e) = sink.write(&vec![0u8; BATCH]).await {
                failed = Some(e);
                break;
            }
        }
        let e = match failed {
            Some(e) => e,
            None => sink.sha256().await.unwrap_err(),
        };
        assert!(
            matches!(&e, OpError::LocalIo(m) if m.contains("writing the snapshot file")),
            "{e:?}"
        );
    }
}
