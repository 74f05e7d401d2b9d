//! The backup side's stages after validation: compress, then encrypt, then count and
//! hash what will be stored.
//!
//! [`Encoder`] takes the RDB bytes the validator released and gives back the bytes to
//! upload. Compression and encryption are CPU work, so each chunk is handed to the
//! blocking pool (with the encoder state moved there and back) instead of running on the
//! runtime's workers. Memory: the compressor's own state (LZ4: two 4 MiB blocks;
//! Zstandard: window plus tables, see the README) and one chunk of output at a time.

use std::io::Write;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::codec::{Codec, Compressor};
use crate::encrypt::Sealer;
use crate::error::OpError;

/// What was stored, when it differs from the raw RDB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredStats {
    /// Bytes of the stored object.
    pub bytes: u64,
    /// Hex SHA-256 of the stored object.
    pub sha256: String,
}

/// The innermost writer: collects the encoded bytes for the caller and hashes them.
#[derive(Default)]
struct Tap {
    out: Vec<u8>,
    sha: Sha256,
    bytes: u64,
}

#[derive(Clone, Default)]
struct TapWriter(Arc<Mutex<Tap>>);

impl Write for TapWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut tap = self.0.lock().expect("tap lock");
        tap.out.extend_from_slice(buf);
        tap.sha.update(buf);
        tap.bytes += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

type Chain = Compressor<Sealer<TapWriter>>;

/// Compress → encrypt → tap, or nothing at all for a plain backup.
pub struct Encoder {
    chain: Option<Chain>,
    tap: TapWriter,
}

fn encode_error(what: &str, e: std::io::Error) -> OpError {
    OpError::Internal(format!("{what} failed: {e}"))
}

impl Encoder {
    /// An encoder for `codec` (with `level`) to `recipients` (clear when empty). Writes
    /// nothing yet (the age header joins the first output).
    pub fn new(
        codec: Codec,
        level: i32,
        recipients: &[age::x25519::Recipient],
    ) -> Result<Self, OpError> {
        let tap = TapWriter::default();
        let chain = if codec == Codec::None && recipients.is_empty() {
            None
        } else {
            let sealer = Sealer::new(recipients, tap.clone())
                .map_err(|e| encode_error("starting the encryption", e))?;
            Some(
                Compressor::new(codec, level, sealer)
                    .map_err(|e| encode_error("starting the compressor", e))?,
            )
        };
        Ok(Encoder { chain, tap })
    }

    /// Whether the stored bytes are the raw RDB (no stage at all).
    pub fn is_plain(&self) -> bool {
        self.chain.is_none()
    }

    fn take_output(&self) -> Vec<u8> {
        std::mem::take(&mut self.tap.0.lock().expect("tap lock").out)
    }

    /// Encodes `bytes`; returns what is ready to store (possibly nothing yet).
    pub async fn encode(&mut self, bytes: &[u8]) -> Result<Vec<u8>, OpError> {
        let Some(mut chain) = self.chain.take() else {
            return Ok(bytes.to_vec());
        };
        let input = bytes.to_vec();
        let chain = tokio::task::spawn_blocking(move || {
            chain
                .write_all(&input)
                .map(|_| chain)
                .map_err(|e| encode_error("compressing/encrypting", e))
        })
        .await
        .map_err(|e| OpError::Internal(format!("encoder task: {e}")))??;
        self.chain = Some(chain);
        Ok(self.take_output())
    }

    /// Ends every stage: the last bytes to store, and what the stored object is (`None`
    /// for a plain backup: it is the RDB).
    pub async fn finish(mut self) -> Result<(Vec<u8>, Option<StoredStats>), OpError> {
        let Some(chain) = self.chain.take() else {
            return Ok((Vec::new(), None));
        };
        tokio::task::spawn_blocking(move || {
            chain
                .finish()
                .and_then(|sealer| sealer.finish())
                .map_err(|e| encode_error("finishing the compressed/encrypted stream", e))
        })
        .await
        .map_err(|e| OpError::Internal(format!("encoder task: {e}")))??;
        let mut tap = self.tap.0.lock().expect("tap lock");
        let rest = std::mem::take(&mut tap.out);
        let stats = StoredStats {
            bytes: tap.bytes,
            sha256: hex::encode(std::mem::take(&mut tap.sha).finalize()),
        };
        Ok((rest, Some(stats)))
    }
}
