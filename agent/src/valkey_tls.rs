//! TLS for the agent's own Valkey connections (rustls).
//!
//! The settings are the ones `valkey-cli` gets (`valkey.tls` in `configure`), so the same
//! configuration works with either source: a CA file *or* a CA directory (OpenSSL-style,
//! as Canonical's valkey charm lays them out — every file in it that holds PEM
//! certificates is trusted, hash links included), a client certificate and key for mutual
//! TLS, the name to verify (`sni`, else the configured host) and `insecure`, which skips
//! the certificate check but still checks the handshake's signatures. Without a CA file or
//! directory the system's roots are used, as the cli does.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::ValkeyTls;

/// Why a TLS client cannot be set up. Names the file, never its contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsSetupError {
    /// A configured file or directory cannot be used (missing, not PEM, key mismatch).
    #[error("valkey.tls.{field}: {reason}")]
    Material { field: &'static str, reason: String },
    /// rustls refused the combination of settings.
    #[error("valkey.tls: {0}")]
    Other(String),
}

fn material(field: &'static str, reason: impl Into<String>) -> TlsSetupError {
    TlsSetupError::Material {
        field,
        reason: reason.into(),
    }
}

/// A ready TLS client: the rustls configuration and the name the certificate must carry.
#[derive(Clone, Debug)]
pub struct TlsClient {
    /// Shared rustls configuration (roots, client certificate, verifier).
    pub config: Arc<ClientConfig>,
    /// Sent as SNI and checked against the certificate (unless `insecure`).
    pub server_name: ServerName<'static>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the TLS client for `host` from the configured settings. Reads the CA, cert and
/// key files (blocking: call it off the async workers or at configure time).
pub fn client(tls: &ValkeyTls, host: &str) -> Result<TlsClient, TlsSetupError> {
    let name = tls.sni.clone().unwrap_or_else(|| {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned()
    });
    let server_name = ServerName::try_from(name)
        .map_err(|_| material("sni", "is not a valid host name or IP address"))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Other(e.to_string()))?;
    let builder = if tls.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCertificateCheck(provider())))
    } else {
        builder.with_root_certificates(roots(tls)?)
    };
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let certs = certificates(cert, "cert-file")?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|_| material("key-file", "holds no readable PEM private key"))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| material("key-file", format!("does not fit cert-file: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => return Err(material("key-file", "is required with cert-file")),
        (None, Some(_)) => return Err(material("cert-file", "is required with key-file")),
    };
    Ok(TlsClient {
        config: Arc::new(config),
        server_name,
    })
}

fn certificates(
    path: &Path,
    field: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|_| material(field, "cannot be read"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| material(field, "is not valid PEM"))?;
    if certs.is_empty() {
        return Err(material(field, "holds no certificate"));
    }
    Ok(certs)
}

/// The trusted roots: the CA file, every certificate in the CA directory, or the system's.
fn roots(tls: &ValkeyTls) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    if let Some(file) = &tls.ca_file {
        for cert in certificates(file, "ca-file")? {
            roots
                .add(cert)
                .map_err(|_| material("ca-file", "holds a certificate that cannot be parsed"))?;
        }
    }
    if let Some(dir) = &tls.ca_dir {
        let entries = std::fs::read_dir(dir).map_err(|_| material("ca-dir", "cannot be read"))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_file() {
                continue;
            }
            // A CA directory also holds CRLs, keys and README files: only what parses
            // as certificates counts.
            if let Ok(iter) = CertificateDer::pem_file_iter(&path) {
                for cert in iter.flatten() {
                    let _ = roots.add(cert);
                }
            }
        }
        if roots.is_empty() {
            return Err(material("ca-dir", "holds no PEM certificate"));
        }
    }
    if tls.ca_file.is_none() && tls.ca_dir.is_none() {
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            return Err(material(
                "ca-file",
                "is required: the system has no CA certificates",
            ));
        }
    }
    Ok(roots)
}

/// `insecure`: accepts any certificate, but still verifies the handshake signatures, so
/// the session is at least bound to the key the server presented.
#[derive(Debug)]
struct NoCertificateCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_CA: &str = include_str!("testdata/ca.pem");

    #[test]
    fn ca_file_and_ca_dir_both_give_roots_and_junk_in_the_dir_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), TEST_CA).unwrap();
        std::fs::write(dir.path().join("README"), "not a certificate").unwrap();
        let by_file = ValkeyTls {
            enabled: true,
            ca_file: Some(dir.path().join("ca.pem")),
            ..Default::default()
        };
        assert_eq!(roots(&by_file).unwrap().len(), 1);
        let by_dir = ValkeyTls {
            enabled: true,
            ca_dir: Some(dir.path().to_owned()),
            ..Default::default()
        };
        assert_eq!(roots(&by_dir).unwrap().len(), 1);
        assert!(client(&by_dir, "127.0.0.2").is_ok());
    }

    #[test]
    fn bad_material_names_its_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("junk"), "nothing").unwrap();
        let cases = [
            (
                ValkeyTls {
                    ca_file: Some(dir.path().join("junk")),
                    ..Default::default()
                },
                "valkey.tls.ca-file",
            ),
            (
                ValkeyTls {
                    ca_dir: Some(dir.path().to_owned()),
                    ..Default::default()
                },
                "valkey.tls.ca-dir",
            ),
            (
                ValkeyTls {
                    insecure: true,
                    cert_file: Some(dir.path().join("junk")),
                    ..Default::default()
                },
                "valkey.tls.key-file",
            ),
        ];
        for (tls, field) in cases {
            let err = client(&tls, "localhost").unwrap_err().to_string();
            assert!(err.starts_with(field), "{err}");
        }
    }
}
