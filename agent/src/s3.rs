//! The S3 client and the translation of its errors.
//!
//! The client is configured for the stores people actually run, not just AWS:
//! path-style addressing by default, SDK checksums only where an operation requires one
//! (many non-AWS stores reject the SDK's default CRC trailers; integrity comes from
//! Content-MD5 instead), rustls with the operator's CA chain, connect/read/attempt
//! timeouts.
//!
//! Store errors are classified here, once, into [`S3Error`]. Its messages carry the S3
//! error code and HTTP status but never the SDK's own text: that text can include
//! request ids and host details the protocol promises not to show.

use std::time::Duration;

use aws_credential_types::Credentials;
use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use aws_smithy_runtime_api::http::Response as HttpResponse;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

use crate::config::{S3Settings, UriStyle};

/// A classified store failure; see the module docs for what messages may hold.
#[derive(Debug, Clone, thiserror::Error)]
pub enum S3Error {
    #[error("the S3 store rejected the request ({detail}); check the access key, secret key and bucket policy")]
    AccessDenied { detail: String },
    #[error("bucket {bucket:?} does not exist")]
    NoBucket { bucket: String },
    #[error("bucket {bucket:?} does not exist and cannot be created ({detail})")]
    CannotCreateBucket { bucket: String, detail: String },
    #[error("cannot reach the S3 endpoint {endpoint}: {detail}")]
    Unreachable { endpoint: String, detail: String },
    #[error("object {key:?} already exists; backups never overwrite objects")]
    Conflict { key: String },
    #[error("the S3 store answered {detail} during {operation}")]
    Other {
        operation: &'static str,
        detail: String,
    },
    #[error("object {key:?} is not a valid record")]
    BadRecord { key: String },
    #[error("invalid S3 client settings: {0}")]
    Setup(String),
}

/// A ready client plus what the rest of the agent needs to address objects.
#[derive(Clone, Debug)]
pub struct Store {
    pub client: aws_sdk_s3::Client,
    pub bucket: String,
    /// The endpoint as shown in messages (no credentials: validated by `config`).
    pub endpoint: String,
    pub storage_class: Option<String>,
}

impl Store {
    /// Builds a client for `settings`. No request is sent.
    pub fn new(settings: &S3Settings) -> Result<Self, S3Error> {
        let mut trust = TrustStore::default();
        for pem in settings
            .ca_pems()
            .map_err(|e| S3Error::Setup(e.to_string()))?
        {
            trust = trust.with_pem_certificate(pem.into_bytes());
        }
        let tls_context = TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .map_err(|_| S3Error::Setup("the CA chain could not be loaded".into()))?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .tls_context(tls_context)
            .build_https();
        let creds = Credentials::new(
            settings.access_key.expose(),
            settings.secret_key.expose(),
            None,
            None,
            "valkey-backup-config",
        );
        let endpoint = settings
            .endpoint
            .clone()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", settings.region()));
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region().to_owned()))
            .credentials_provider(creds)
            .endpoint_url(endpoint.clone())
            .force_path_style(settings.uri_style() == UriStyle::Path)
            .http_client(http)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .read_timeout(Duration::from_secs(120))
                    // One attempt of any request, a part upload included: long enough for
                    // a large part on a slow link, short enough that a stalled upload ends.
                    .operation_attempt_timeout(Duration::from_secs(900))
                    .build(),
            )
            .build();
        Ok(Store {
            client: aws_sdk_s3::Client::from_conf(conf),
            bucket: settings.bucket.clone(),
            endpoint,
            storage_class: settings.storage_class.clone().filter(|s| !s.is_empty()),
        })
    }

    /// Classifies an SDK error for `operation` on `key` (a key only matters for conflicts).
    pub fn classify<E>(
        &self,
        operation: &'static str,
        key: &str,
        err: SdkError<E, HttpResponse>,
    ) -> S3Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let unreachable = |detail: &str| S3Error::Unreachable {
            endpoint: self.endpoint.clone(),
            detail: detail.to_owned(),
        };
        let (code, status) = match &err {
            SdkError::DispatchFailure(f) => {
                return if f.is_timeout() {
                    unreachable("connection timed out")
                } else if f.is_io() {
                    unreachable("connection failed (refused, reset or DNS)")
                } else {
                    unreachable("connection or TLS handshake failed")
                };
            }
            SdkError::TimeoutError(_) => return unreachable("request timed out"),
            SdkError::ConstructionFailure(_) => {
                return S3Error::Other {
                    operation,
                    detail: "a request that could not be built".into(),
                }
            }
            SdkError::ResponseError(r) => (None, Some(r.raw().status().as_u16())),
            SdkError::ServiceError(s) => (
                s.err().code().map(str::to_owned),
                Some(s.raw().status().as_u16()),
            ),
            _ => (None, None),
        };
        classify_answer(operation, key, &self.bucket, code.as_deref(), status)
    }
}

/// Maps an S3 error code / HTTP status to a classified error.
pub fn classify_answer(
    operation: &'static str,
    key: &str,
    bucket: &str,
    code: Option<&str>,
    status: Option<u16>,
) -> S3Error {
    let detail = match (code, status) {
        (Some(c), Some(s)) => format!("{c} (HTTP {s})"),
        (Some(c), None) => c.to_owned(),
        (None, Some(s)) => format!("HTTP {s}"),
        (None, None) => "an unreadable response".to_owned(),
    };
    match code {
        Some(
            "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "AccessDenied"
            | "InvalidToken"
            | "ExpiredToken"
            | "AllAccessDisabled"
            | "InvalidSecurity"
            | "AuthorizationHeaderMalformed",
        ) => return S3Error::AccessDenied { detail },
        Some("NoSuchBucket") => {
            return S3Error::NoBucket {
                bucket: bucket.to_owned(),
            }
        }
        Some("PreconditionFailed" | "ConditionalRequestConflict") => {
            return S3Error::Conflict {
                key: key.to_owned(),
            }
        }
        _ => {}
    }
    match status {
        Some(401 | 403) => S3Error::AccessDenied { detail },
        Some(412) => S3Error::Conflict {
            key: key.to_owned(),
        },
        _ => S3Error::Other { operation, detail },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_errors_are_access_denied() {
        for code in [
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied",
        ] {
            let e = classify_answer("PutObject", "k", "b", Some(code), Some(403));
            assert!(matches!(e, S3Error::AccessDenied { .. }), "{code}");
        }
        let e = classify_answer("HeadBucket", "", "b", None, Some(403));
        assert!(matches!(e, S3Error::AccessDenied { .. }));
    }

    #[test]
    fn precondition_failures_are_conflicts() {
        let e = classify_answer("PutObject", "k", "b", Some("PreconditionFailed"), Some(412));
        assert!(matches!(e, S3Error::Conflict { .. }));
        let e = classify_answer("PutObject", "k", "b", None, Some(412));
        assert!(matches!(e, S3Error::Conflict { .. }));
    }

    #[test]
    fn other_answers_keep_code_and_status_only() {
        let e = classify_answer("UploadPart", "k", "b", Some("SlowDown"), Some(503));
        assert_eq!(
            e.to_string(),
            "the S3 store answered SlowDown (HTTP 503) during UploadPart"
        );
    }
}
