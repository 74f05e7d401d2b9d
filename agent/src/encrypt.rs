//! Client-side encryption of the stored object with age (X25519 recipients).
//!
//! age is a small, audited file format with a streaming AEAD (ChaCha20-Poly1305 over
//! 64 KiB chunks, each authenticated, the last one marked), so a changed, missing or
//! appended byte is detected while streaming, and `age -d -i key.txt` opens what the agent
//! stored. A file is encrypted to every configured recipient, so an old key keeps opening
//! old backups while a new one is rotated in.
//!
//! Secrets: identities arrive as [`Secret`]s and are parsed here; nothing in this module
//! formats one. What is recorded about keys is a [`fingerprint`] of the *public* key,
//! which tells which key a backup needs without revealing anything usable.
//!
//! Pure apart from the `std::io` adapters.

use std::io::{self, BufRead, Read, Write};

use age::x25519;
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// The scheme recorded in manifests.
pub const SCHEME: &str = "age-x25519";
/// The suffix an encrypted data object's name gets.
pub const SUFFIX: &str = ".age";

/// Why a key was refused. Never holds the key itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("item {index} is not an age X25519 recipient (age1…): {why}")]
    Recipient { index: usize, why: &'static str },
    #[error("item {index} is not an age X25519 identity (AGE-SECRET-KEY-1…)")]
    Identity { index: usize },
}

/// Parses public recipients (`age1…`).
pub fn parse_recipients(items: &[String]) -> Result<Vec<x25519::Recipient>, KeyError> {
    items
        .iter()
        .enumerate()
        .map(|(index, s)| {
            s.trim()
                .parse::<x25519::Recipient>()
                .map_err(|why| KeyError::Recipient { index, why })
        })
        .collect()
}

/// Parses secret identities (`AGE-SECRET-KEY-1…`). The error names the item's position
/// only: the parser's own message could quote part of the key.
pub fn parse_identities(items: &[Secret]) -> Result<Vec<x25519::Identity>, KeyError> {
    items
        .iter()
        .enumerate()
        .map(|(index, s)| {
            s.expose()
                .trim()
                .parse::<x25519::Identity>()
                .map_err(|_| KeyError::Identity { index })
        })
        .collect()
}

/// A short, stable name of a public key for manifests, results and messages: the first
/// 16 bytes of the SHA-256 of its `age1…` text, hex, prefixed `sha256:`. Public keys are
/// not secret, but a fingerprint keeps records short and names no key a reader could
/// encrypt to by mistake.
pub fn fingerprint(recipient: &x25519::Recipient) -> String {
    let digest = Sha256::digest(recipient.to_string().as_bytes());
    format!("sha256:{}", hex::encode(&digest[..16]))
}

/// Fingerprints of the public keys of `identities`, in order.
pub fn identity_fingerprints(identities: &[x25519::Identity]) -> Vec<String> {
    identities
        .iter()
        .map(|i| fingerprint(&i.to_public()))
        .collect()
}

/// The identities among `identities` whose public key is one of `recipients`
/// (fingerprints, as a manifest records them).
pub fn matching<'a>(
    identities: &'a [x25519::Identity],
    recipients: &[String],
) -> Vec<&'a x25519::Identity> {
    identities
        .iter()
        .filter(|i| recipients.contains(&fingerprint(&i.to_public())))
        .collect()
}

/// An encrypting writer in front of `W` (or a pass-through); [`Sealer::finish`] writes the
/// last chunk and returns `W`.
pub enum Sealer<W: Write> {
    Clear(W),
    Age(Box<age::stream::StreamWriter<W>>),
}

impl<W: Write> Sealer<W> {
    /// A sealer to `recipients` (clear when there are none). Writes the age header.
    pub fn new(recipients: &[x25519::Recipient], out: W) -> io::Result<Self> {
        if recipients.is_empty() {
            return Ok(Sealer::Clear(out));
        }
        let enc =
            age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| io::Error::other(format!("age: {e}")))?;
        Ok(Sealer::Age(Box::new(enc.wrap_output(out)?)))
    }

    /// Ends the stream and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Sealer::Clear(w) => Ok(w),
            Sealer::Age(s) => s.finish(),
        }
    }
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sealer::Clear(w) => w.write(buf),
            Sealer::Age(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sealer::Clear(w) => w.flush(),
            Sealer::Age(s) => s.flush(),
        }
    }
}

/// Why an age stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// None of the identities opens the header (wrong key, or an altered header).
    #[error("none of the configured identities opens it")]
    NoMatchingKey,
    /// The header is not an intact age header (altered, truncated, not age at all).
    #[error("its age header is damaged ({0})")]
    Header(String),
    /// Reading the input failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Opens an age stream with `identities` and returns the plaintext reader; every chunk
/// read from it is authenticated (a failure is an `InvalidData` I/O error).
pub fn open<'a, R: BufRead + Send + 'a>(
    input: R,
    identities: &[&x25519::Identity],
) -> Result<Box<dyn Read + Send + 'a>, OpenError> {
    let dec = age::Decryptor::new_buffered(input).map_err(classify)?;
    let reader = dec
        .decrypt(identities.iter().map(|i| *i as &dyn age::Identity))
        .map_err(classify)?;
    Ok(Box::new(reader))
}

fn classify(e: age::DecryptError) -> OpenError {
    match e {
        age::DecryptError::NoMatchingKeys => OpenError::NoMatchingKey,
        age::DecryptError::Io(e) => OpenError::Io(e),
        age::DecryptError::InvalidHeader => OpenError::Header("not a valid header".into()),
        age::DecryptError::InvalidMac => OpenError::Header("header MAC mismatch".into()),
        age::DecryptError::UnknownFormat => OpenError::Header("unknown format version".into()),
        age::DecryptError::DecryptionFailed | age::DecryptError::KeyDecryptionFailed => {
            OpenError::Header("a recipient stanza does not decrypt".into())
        }
        _ => OpenError::Header("unsupported".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    fn key() -> (x25519::Identity, Secret, String) {
        let id = x25519::Identity::generate();
        let secret = Secret::new(id.to_string().expose_secret().to_owned());
        let public = id.to_public().to_string();
        (id, secret, public)
    }

    fn seal(data: &[u8], recipients: &[x25519::Recipient]) -> Vec<u8> {
        let mut s = Sealer::new(recipients, Vec::new()).unwrap();
        for c in data.chunks(70_001) {
            s.write_all(c).unwrap();
        }
        s.finish().unwrap()
    }

    fn unseal(stored: &[u8], ids: &[&x25519::Identity]) -> Result<Vec<u8>, String> {
        let mut r = open(stored, ids).map_err(|e| format!("open: {e}"))?;
        let mut out = Vec::new();
        r.read_to_end(&mut out).map_err(|e| format!("read: {e}"))?;
        Ok(out)
    }

    #[test]
    fn keys_parse_and_errors_never_quote_the_secret() {
        let (_, secret, public) = key();
        assert_eq!(
            parse_recipients(std::slice::from_ref(&public))
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            parse_identities(std::slice::from_ref(&secret))
                .unwrap()
                .len(),
            1
        );
        let err = parse_recipients(&[public.clone(), "age1nope".into()]).unwrap_err();
        assert!(matches!(err, KeyError::Recipient { index: 1, .. }));
        // A recipient where an identity belongs, and a damaged identity.
        let mut damaged = secret.expose().to_owned();
        damaged.pop();
        let err = parse_identities(&[Secret::new(public), Secret::new(damaged.clone())])
            .err()
            .unwrap();
        assert_eq!(err, KeyError::Identity { index: 0 });
        let err = parse_identities(&[secret.clone(), Secret::new(damaged.clone())])
            .err()
            .unwrap();
        assert!(!err.to_string().contains(&damaged[15..]), "{err}");
    }

    #[test]
    fn fingerprints_are_stable_public_and_match_identities() {
        let (id, secret, public) = key();
        let r: x25519::Recipient = public.parse().unwrap();
        let fp = fingerprint(&r);
        assert_eq!(fp, fingerprint(&id.to_public()));
        assert!(fp.starts_with("sha256:") && fp.len() == 7 + 32, "{fp}");
        assert!(!fp.contains(&public) && !fp.contains(secret.expose()));
        let (other, _, _) = key();
        let ids = vec![other, id];
        let m = matching(&ids, std::slice::from_ref(&fp));
        assert_eq!(m.len(), 1);
        assert_eq!(fingerprint(&m[0].to_public()), fp);
    }

    #[test]
    fn several_recipients_each_open_it_and_a_stranger_does_not() {
        let (a, _, _) = key();
        let (b, _, _) = key();
        let (c, _, _) = key();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let stored = seal(&data, &[a.to_public(), b.to_public()]);
        assert_eq!(&stored[..21], b"age-encryption.org/v1");
        assert_eq!(unseal(&stored, &[&a]).unwrap(), data);
        assert_eq!(unseal(&stored, &[&c, &b]).unwrap(), data);
        assert_eq!(
            unseal(&stored, &[&c]).unwrap_err(),
            "open: none of the configured identities opens it"
        );
    }

    #[test]
    fn a_flipped_byte_anywhere_fails_authentication() {
        let (a, _, _) = key();
        let data: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        let stored = seal(&data, &[a.to_public()]);
        for pos in [30, 100, stored.len() / 2, stored.len() - 1] {
            let mut bad = stored.clone();
            bad[pos] ^= 0x40;
            assert!(unseal(&bad, &[&a]).is_err(), "flip at {pos} went unnoticed");
        }
        assert!(
            unseal(&stored[..stored.len() - 1], &[&a]).is_err(),
            "truncation"
        );
    }

    #[test]
    fn no_recipients_means_clear() {
        let stored = seal(b"REDIS0011", &[]);
        assert_eq!(stored, b"REDIS0011");
    }
}
