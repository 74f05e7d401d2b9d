//! [`ObjectStore`] on S3 and S3-compatible stores; the only module that knows the SDK.
//!
//! The client is configured for the stores people actually run, not just AWS:
//! path-style addressing by default, SDK checksums only where required (see
//! [`compat::checksum_policy`]), rustls with the operator's CA chain, connect/read/attempt
//! timeouts. Every PutObject and UploadPart carries an integrity header (Object Lock
//! buckets require one, and it lets the store refuse a part damaged in transit):
//! `Content-MD5`, or `x-amz-checksum-crc32c` / `-crc64nvme` where `configure` found that
//! the store checks them ([`IntegrityHeader`], `s3.checksum`); [`PutMode::Create`] is
//! `If-None-Match: *`.
//!
//! SDK errors are classified here, once, into [`StoreError`]: messages carry the S3
//! error code and HTTP status but never the SDK's text.

use std::ops::Range;
use std::time::Duration;

use aws_credential_types::Credentials;
use aws_sdk_s3::config::{BehaviorVersion, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketLocationConstraint, ChecksumAlgorithm, ChecksumType, CompletedMultipartUpload,
    CompletedPart, CreateBucketConfiguration, Delete, ObjectIdentifier, ObjectLockEnabled,
    ObjectLockLegalHoldStatus, StorageClass,
};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use aws_smithy_runtime_api::http::Response as HttpResponse;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use bytes::Bytes;

use super::api::{
    GetResult, IntegrityHeader, IntegrityProbe, ObjectLock, ObjectMeta, ObjectStore, OpenUpload,
    Page, PageToken, PartId, PutMode, PutOptions, StoreError, StoredVersion,
};
use super::compat;
use crate::config::{ChecksumChoice, S3Settings, UriStyle};

/// A bucket on an S3-compatible store.
#[derive(Clone, Debug)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    region: String,
    /// The endpoint as shown in messages (no credentials: validated by `config`).
    endpoint: String,
    storage_class: Option<String>,
    /// The integrity header on every body (`s3.checksum`; `auto` unprobed means MD5).
    integrity: IntegrityHeader,
}

/// `Content-MD5` header value for a body.
pub fn content_md5(body: &[u8]) -> String {
    IntegrityHeader::Md5.value(body)
}

/// The integrity header a configured `s3.checksum` stands for.
pub fn integrity_header(choice: ChecksumChoice) -> IntegrityHeader {
    match choice {
        ChecksumChoice::Crc32c => IntegrityHeader::Crc32c,
        ChecksumChoice::Crc64nvme => IntegrityHeader::Crc64Nvme,
        ChecksumChoice::Md5Etag => IntegrityHeader::Md5Etag,
        ChecksumChoice::Auto | ChecksumChoice::Md5 => IntegrityHeader::Md5,
    }
}

/// The body of the probe parts; any bytes do.
const PROBE_BODY: &[u8] = b"valkey-backup: does this store check x-amz-checksum headers?";

impl S3Store {
    /// Builds a client for `settings`. No request is sent.
    pub fn new(settings: &S3Settings) -> Result<Self, StoreError> {
        let mut trust = TrustStore::default();
        for pem in settings
            .ca_pems()
            .map_err(|e| StoreError::Setup(e.to_string()))?
        {
            trust = trust.with_pem_certificate(pem.into_bytes());
        }
        let tls_context = TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .map_err(|_| StoreError::Setup("the CA chain could not be loaded".into()))?;
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
        let (request_checksums, response_checksums) = compat::checksum_policy();
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region().to_owned()))
            .credentials_provider(creds)
            .endpoint_url(endpoint.clone())
            .force_path_style(settings.uri_style() == UriStyle::Path)
            .http_client(http)
            .request_checksum_calculation(request_checksums)
            .response_checksum_validation(response_checksums)
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .interceptor(super::attempts::FailedAttempts)
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
        Ok(S3Store {
            client: aws_sdk_s3::Client::from_conf(conf),
            bucket: settings.bucket.clone(),
            region: settings.region().to_owned(),
            endpoint,
            storage_class: settings.storage_class.clone().filter(|s| !s.is_empty()),
            integrity: integrity_header(settings.checksum),
        })
    }

    /// With [`IntegrityHeader::Md5Etag`], the store's ETag must be the MD5 the agent
    /// sent: anything else means the store got other bytes.
    fn check_etag(
        &self,
        operation: &'static str,
        md5: &str,
        etag: Option<&str>,
    ) -> Result<(), StoreError> {
        if self.integrity != IntegrityHeader::Md5Etag
            || etag.is_some_and(|e| IntegrityHeader::etag_matches(md5, e))
        {
            return Ok(());
        }
        Err(StoreError::Answer {
            operation,
            detail: "an ETag that is not the MD5 of the bytes sent (damaged in transit)".into(),
        })
    }

    /// The header this store's writes carry.
    pub fn integrity(&self) -> IntegrityHeader {
        self.integrity
    }

    /// One probe part of the upload `upload_id` with the header `value`.
    async fn probe_part(
        &self,
        key: &str,
        upload_id: &str,
        header: IntegrityHeader,
        value: String,
    ) -> Result<
        Option<String>,
        SdkError<aws_sdk_s3::operation::upload_part::UploadPartError, HttpResponse>,
    > {
        let req = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(1)
            .body(ByteStream::from_static(PROBE_BODY));
        let req = match header {
            IntegrityHeader::Md5 | IntegrityHeader::Md5Etag => req.content_md5(value),
            IntegrityHeader::Crc32c => req.checksum_crc32_c(value),
            IntegrityHeader::Crc64Nvme => req.checksum_crc64_nvme(value),
        };
        req.customize()
            .disable_payload_signing()
            .send()
            .await
            .map(|out| out.e_tag)
    }

    /// The probe's two parts on an open upload: a wrong value must be refused with a
    /// 4xx answer (not an access error), then the right one taken.
    async fn probe_upload(
        &self,
        key: &str,
        upload_id: &str,
        header: IntegrityHeader,
    ) -> Result<IntegrityProbe, StoreError> {
        // The value of other bytes: well-formed, and wrong for this body.
        let wrong = header.value(b"not the probe body");
        let refused = match self.probe_part(key, upload_id, header, wrong).await {
            Ok(_) => false,
            Err(e) => match self.classify("UploadPart", key, e) {
                e @ (StoreError::AccessDenied { .. }
                | StoreError::NoBucket { .. }
                | StoreError::Unreachable { .. }) => return Err(e),
                StoreError::Answer { detail, .. } => detail.contains("HTTP 4"),
                _ => true,
            },
        };
        let right = header.value(PROBE_BODY);
        let etag = match self.probe_part(key, upload_id, header, right).await {
            Ok(etag) => etag,
            // The right value refused too: the store does not take this header at all.
            Err(_) => return Ok(IntegrityProbe::default()),
        };
        let md5 = IntegrityHeader::Md5.value(PROBE_BODY);
        Ok(IntegrityProbe {
            checked: refused,
            etag_is_md5: etag.is_some_and(|e| IntegrityHeader::etag_matches(&md5, &e)),
        })
    }

    /// Classifies an SDK error for `operation` on `key`.
    fn classify<E>(
        &self,
        operation: &'static str,
        key: &str,
        err: SdkError<E, HttpResponse>,
    ) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let unreachable = |detail: &str| StoreError::Unreachable {
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
                return StoreError::Answer {
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

    /// A failed GetObject: a missing key is [`StoreError::NotFound`].
    fn get_failed(
        &self,
        key: &str,
        err: SdkError<aws_sdk_s3::operation::get_object::GetObjectError, HttpResponse>,
    ) -> StoreError {
        if err.as_service_error().is_some_and(|s| s.is_no_such_key()) {
            StoreError::NotFound {
                key: key.to_owned(),
            }
        } else {
            self.classify("GetObject", key, err)
        }
    }

    /// A GET's body as it arrives, in the pieces the connection delivered (not copied
    /// together), a broken connection as [`Self::body_lost`].
    fn streamed(&self, length: Option<i64>, body: ByteStream) -> GetResult {
        let lost = self.body_lost();
        let body = futures::stream::unfold(Some(body), move |body| {
            let lost = lost.clone();
            async move {
                let mut body = body?;
                match body.next().await {
                    None => None,
                    Some(Ok(b)) => Some((Ok(b), Some(body))),
                    Some(Err(_)) => Some((Err(lost), None)),
                }
            }
        });
        GetResult {
            size: length.unwrap_or(0).max(0) as u64,
            body: Box::pin(body),
        }
    }

    fn body_lost(&self) -> StoreError {
        StoreError::Unreachable {
            endpoint: self.endpoint.clone(),
            detail: "connection lost while reading an object".into(),
        }
    }

    /// Whether the object exists with exactly `size` bytes.
    async fn object_has_size(&self, key: &str, size: u64) -> bool {
        matches!(self.head(key, None).await, Ok(m) if m.size == size)
    }
}

/// Maps an S3 error code / HTTP status to a classified error.
pub fn classify_answer(
    operation: &'static str,
    key: &str,
    bucket: &str,
    code: Option<&str>,
    status: Option<u16>,
) -> StoreError {
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
        ) => return StoreError::AccessDenied { detail },
        Some("NoSuchBucket") => {
            return StoreError::NoBucket {
                bucket: bucket.to_owned(),
            }
        }
        Some("NoSuchKey" | "NoSuchVersion") => {
            return StoreError::NotFound {
                key: key.to_owned(),
            }
        }
        Some("PreconditionFailed" | "ConditionalRequestConflict") => {
            return StoreError::AlreadyExists {
                key: key.to_owned(),
            }
        }
        _ => {}
    }
    if compat::is_unsupported(code, status) {
        return StoreError::Unsupported { operation };
    }
    match status {
        Some(401 | 403) => StoreError::AccessDenied { detail },
        Some(412) => StoreError::AlreadyExists {
            key: key.to_owned(),
        },
        _ => StoreError::Answer { operation, detail },
    }
}

fn part_number(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[async_trait::async_trait]
impl ObjectStore for S3Store {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn get(&self, key: &str) -> Result<GetResult, StoreError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.get_failed(key, e))?;
        Ok(self.streamed(out.content_length(), out.body))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<GetResult, StoreError> {
        if range.is_empty() {
            return Ok(GetResult {
                size: 0,
                body: Box::pin(futures::stream::empty()),
            });
        }
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await
            .map_err(|e| self.get_failed(key, e))?;
        // A store that sends the range without a length (chunked) is held to the length
        // asked for by the body's own count.
        let length = out
            .content_length()
            .or(Some((range.end - range.start) as i64));
        Ok(self.streamed(length, out.body))
    }

    async fn head(&self, key: &str, version_id: Option<&str>) -> Result<ObjectMeta, StoreError> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_owned))
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error().is_some_and(|s| s.is_not_found()) {
                    StoreError::NotFound {
                        key: key.to_owned(),
                    }
                } else {
                    self.classify("HeadObject", key, e)
                }
            })?;
        Ok(ObjectMeta {
            key: key.to_owned(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            last_modified: out.last_modified().map(|t| t.secs()),
            lock: ObjectLock {
                mode: out.object_lock_mode().map(|m| m.as_str().to_owned()),
                retain_until: out.object_lock_retain_until_date().map(|t| t.secs()),
                legal_hold: out.object_lock_legal_hold_status()
                    == Some(&ObjectLockLegalHoldStatus::On),
            },
        })
    }

    async fn put(&self, key: &str, body: Bytes, opts: &PutOptions) -> Result<(), StoreError> {
        let value = hash_off_runtime(self.integrity, body.clone()).await?;
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(opts.content_type)
            .body(ByteStream::from(body));
        req = match self.integrity {
            IntegrityHeader::Md5 | IntegrityHeader::Md5Etag => req.content_md5(value.clone()),
            IntegrityHeader::Crc32c => req.checksum_crc32_c(value.clone()),
            IntegrityHeader::Crc64Nvme => req.checksum_crc64_nvme(value.clone()),
        };
        if opts.mode == PutMode::Create {
            req = req.if_none_match("*");
        }
        if let Some(sc) = self.storage_class.as_ref().filter(|_| opts.bulk) {
            req = req.storage_class(StorageClass::from(sc.as_str()));
        }
        let out = req
            .customize()
            // The signed integrity header already binds the body to the signature;
            // hashing it a second time for SigV4 would only cost CPU.
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| self.classify("PutObject", key, e))?;
        self.check_etag("PutObject", &value, out.e_tag.as_deref())
    }

    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> Result<String, StoreError> {
        let mut req = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(opts.content_type);
        if let Some(sc) = self.storage_class.as_ref().filter(|_| opts.bulk) {
            req = req.storage_class(StorageClass::from(sc.as_str()));
        }
        // AWS refuses parts whose checksum algorithm the upload was not created with.
        req = match self.integrity {
            IntegrityHeader::Md5 | IntegrityHeader::Md5Etag => req,
            IntegrityHeader::Crc32c => req.checksum_algorithm(ChecksumAlgorithm::Crc32C),
            // CRC64NVME exists only as a full-object checksum on AWS.
            IntegrityHeader::Crc64Nvme => req
                .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
                .checksum_type(ChecksumType::FullObject),
        };
        let out = req
            .send()
            .await
            .map_err(|e| self.classify("CreateMultipartUpload", key, e))?;
        out.upload_id.ok_or(StoreError::Answer {
            operation: "CreateMultipartUpload",
            detail: "no upload id in the answer".into(),
        })
    }

    async fn put_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Bytes,
    ) -> Result<PartId, StoreError> {
        let value = hash_off_runtime(self.integrity, body.clone()).await?;
        let req = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part_number(number))
            .body(ByteStream::from(body));
        let (req, checksum) = match self.integrity {
            IntegrityHeader::Md5 | IntegrityHeader::Md5Etag => {
                (req.content_md5(value.clone()), None)
            }
            IntegrityHeader::Crc32c => (req.checksum_crc32_c(value.clone()), Some(value.clone())),
            IntegrityHeader::Crc64Nvme => {
                (req.checksum_crc64_nvme(value.clone()), Some(value.clone()))
            }
        };
        let out = req
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| self.classify("UploadPart", key, e))?;
        self.check_etag("UploadPart", &value, out.e_tag.as_deref())?;
        Ok(PartId {
            number,
            etag: out.e_tag,
            checksum,
        })
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        mut parts: Vec<PartId>,
        size: u64,
        opts: &PutOptions,
    ) -> Result<(), StoreError> {
        parts.sort_by_key(|p| p.number);
        let parts = parts
            .into_iter()
            .map(|p| {
                let part = CompletedPart::builder()
                    .part_number(part_number(p.number))
                    .set_e_tag(p.etag);
                match (self.integrity, p.checksum) {
                    (IntegrityHeader::Crc32c, Some(c)) => part.checksum_crc32_c(c),
                    (IntegrityHeader::Crc64Nvme, Some(c)) => part.checksum_crc64_nvme(c),
                    _ => part,
                }
                .build()
            })
            .collect();
        let mut req = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            );
        if opts.mode == PutMode::Create {
            req = req.if_none_match("*");
        }
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                if compat::completion_may_have_succeeded(status)
                    && self.object_has_size(key, size).await
                {
                    return Ok(());
                }
                Err(self.classify("CompleteMultipartUpload", key, e))
            }
        }
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_upload()) => Ok(()),
            Err(e) => Err(self.classify("AbortMultipartUpload", key, e)),
        }
    }

    async fn list_page(
        &self,
        prefix: &str,
        token: Option<PageToken>,
    ) -> Result<Page<ObjectMeta>, StoreError> {
        let page = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_continuation_token(token.map(|t| t.key))
            .send()
            .await
            .map_err(|e| self.classify("ListObjectsV2", prefix, e))?;
        let items = page
            .contents()
            .iter()
            .filter_map(|o| {
                Some(ObjectMeta {
                    key: o.key()?.to_owned(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    last_modified: o.last_modified().map(|t| t.secs()),
                    lock: ObjectLock::default(),
                })
            })
            .collect();
        let next = (page.is_truncated() == Some(true)).then(|| PageToken {
            key: page
                .next_continuation_token()
                .unwrap_or_default()
                .to_owned(),
            id: None,
        });
        Ok(Page { items, next })
    }

    async fn list_uploads_page(
        &self,
        prefix: &str,
        token: Option<PageToken>,
    ) -> Result<Page<OpenUpload>, StoreError> {
        let (key_marker, id_marker) = split(token);
        let page = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_key_marker(key_marker)
            .set_upload_id_marker(id_marker)
            .send()
            .await
            .map_err(|e| self.classify("ListMultipartUploads", prefix, e))?;
        let items = page
            .uploads()
            .iter()
            .filter_map(|u| {
                Some(OpenUpload {
                    key: u.key()?.to_owned(),
                    upload_id: u.upload_id()?.to_owned(),
                    initiated: u.initiated().map(|t| t.secs()),
                })
            })
            .collect();
        let next = (page.is_truncated() == Some(true)).then(|| PageToken {
            key: page.next_key_marker().unwrap_or_default().to_owned(),
            id: page.next_upload_id_marker().map(str::to_owned),
        });
        Ok(Page { items, next })
    }

    async fn list_versions_page(
        &self,
        prefix: &str,
        token: Option<PageToken>,
    ) -> Result<Page<StoredVersion>, StoreError> {
        let (key_marker, id_marker) = split(token);
        let page = self
            .client
            .list_object_versions()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_key_marker(key_marker)
            .set_version_id_marker(id_marker)
            .send()
            .await
            .map_err(|e| self.classify("ListObjectVersions", prefix, e))?;
        let mut items = Vec::new();
        for v in page.versions() {
            if let Some(key) = v.key() {
                items.push(StoredVersion {
                    key: key.to_owned(),
                    version_id: v.version_id().map(str::to_owned),
                    delete_marker: false,
                });
            }
        }
        for m in page.delete_markers() {
            if let Some(key) = m.key() {
                items.push(StoredVersion {
                    key: key.to_owned(),
                    version_id: m.version_id().map(str::to_owned),
                    delete_marker: true,
                });
            }
        }
        let next = (page.is_truncated() == Some(true)).then(|| PageToken {
            key: page.next_key_marker().unwrap_or_default().to_owned(),
            id: page.next_version_id_marker().map(str::to_owned),
        });
        Ok(Page { items, next })
    }

    async fn delete_version(&self, key: &str, version_id: Option<&str>) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_owned))
            .send()
            .await
            .map_err(|e| self.classify("DeleteObject", key, e))?;
        Ok(())
    }

    async fn delete_batch(
        &self,
        versions: &[StoredVersion],
    ) -> Result<Vec<(StoredVersion, StoreError)>, StoreError> {
        if versions.is_empty() {
            return Ok(Vec::new());
        }
        let objects = versions
            .iter()
            .map(|v| {
                ObjectIdentifier::builder()
                    .key(&v.key)
                    .set_version_id(v.version_id.clone())
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| StoreError::Setup("a DeleteObjects entry could not be built".into()))?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|_| StoreError::Setup("a DeleteObjects request could not be built".into()))?;
        let out = self
            .client
            .delete_objects()
            .bucket(&self.bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| self.classify("DeleteObjects", "", e))?;
        // Quiet mode: only the refused keys come back, each with its own S3 error code.
        let refused = out
            .errors()
            .iter()
            .map(|e| {
                let key = e.key().unwrap_or_default();
                let version = versions
                    .iter()
                    .find(|v| v.key == key && v.version_id.as_deref() == e.version_id())
                    .or_else(|| versions.iter().find(|v| v.key == key))
                    .cloned()
                    .unwrap_or(StoredVersion {
                        key: key.to_owned(),
                        version_id: e.version_id().map(str::to_owned),
                        delete_marker: false,
                    });
                let err = classify_answer("DeleteObjects", key, &self.bucket, e.code(), None);
                (version, err)
            })
            .collect();
        Ok(refused)
    }

    async fn object_lock_enabled(&self) -> Result<bool, StoreError> {
        match self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .object_lock_configuration()
                .and_then(|c| c.object_lock_enabled())
                == Some(&ObjectLockEnabled::Enabled)),
            Err(e) => match self.classify("GetObjectLockConfiguration", "", e) {
                // No configuration at all: AWS and moto answer this code (404).
                StoreError::Answer { detail, .. }
                    if detail.starts_with("ObjectLockConfigurationNotFoundError") =>
                {
                    Ok(false)
                }
                // Garage: no Object Lock at all.
                StoreError::Unsupported { .. } => Ok(false),
                other => Err(other),
            },
        }
    }

    async fn versioning(&self) -> Result<bool, StoreError> {
        match self
            .client
            .get_bucket_versioning()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => Ok(out.status().is_some()),
            Err(e) => match self.classify("GetBucketVersioning", "", e) {
                e if compat::versioning_unreadable_means_unversioned(&e) => Ok(false),
                other => Err(other),
            },
        }
    }

    async fn ensure_bucket(&self) -> Result<bool, StoreError> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => return Ok(false),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {}
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                return Err(if compat::head_bucket_missing(status) {
                    StoreError::NoBucket {
                        bucket: self.bucket.clone(),
                    }
                } else {
                    self.classify("HeadBucket", "", e)
                });
            }
        }
        let mut req = self.client.create_bucket().bucket(&self.bucket);
        if let Some(region) = compat::location_constraint(&self.region) {
            req = req.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region))
                    .build(),
            );
        }
        match req.send().await {
            Ok(_) => Ok(true),
            // Another unit created it in the meantime.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_bucket_already_owned_by_you()) =>
            {
                Ok(false)
            }
            Err(e) => Err(match self.classify("CreateBucket", "", e) {
                StoreError::AccessDenied { detail } | StoreError::Answer { detail, .. } => {
                    StoreError::CannotCreateBucket {
                        bucket: self.bucket.clone(),
                        detail,
                    }
                }
                StoreError::Unsupported { operation } => StoreError::CannotCreateBucket {
                    bucket: self.bucket.clone(),
                    detail: format!("the store does not implement {operation}"),
                },
                other => other,
            }),
        }
    }

    async fn probe_integrity(
        &self,
        key: &str,
        header: IntegrityHeader,
    ) -> Result<IntegrityProbe, StoreError> {
        let mut req = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/octet-stream");
        req = match header {
            IntegrityHeader::Md5 | IntegrityHeader::Md5Etag => req,
            IntegrityHeader::Crc32c => req.checksum_algorithm(ChecksumAlgorithm::Crc32C),
            IntegrityHeader::Crc64Nvme => req
                .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
                .checksum_type(ChecksumType::FullObject),
        };
        let upload_id = match req.send().await {
            Ok(out) => out.upload_id.ok_or(StoreError::Answer {
                operation: "CreateMultipartUpload",
                detail: "no upload id in the answer".into(),
            })?,
            Err(e) => {
                return match self.classify("CreateMultipartUpload", key, e) {
                    // A store that refuses the algorithm on the upload does not check it.
                    StoreError::Answer { detail, .. } if detail.contains("HTTP 4") => {
                        Ok(IntegrityProbe::default())
                    }
                    StoreError::Unsupported { .. } => Ok(IntegrityProbe::default()),
                    other => Err(other),
                };
            }
        };
        let verdict = self.probe_upload(key, &upload_id, header).await;
        // Always aborted: the probe leaves nothing behind (and an abort that fails leaves
        // an open upload that prune's sweep of stale uploads takes).
        let aborted = self.abort_multipart(key, &upload_id).await;
        let verdict = verdict?;
        aborted?;
        Ok(verdict)
    }
}

fn split(token: Option<PageToken>) -> (Option<String>, Option<String>) {
    match token {
        Some(t) => (Some(t.key).filter(|k| !k.is_empty()), t.id),
        None => (None, None),
    }
}

/// The integrity header of a multi-megabyte body is CPU work (MD5 above all): it runs
/// off the async workers.
async fn hash_off_runtime(header: IntegrityHeader, body: Bytes) -> Result<String, StoreError> {
    if body.len() < 64 * 1024 {
        return Ok(header.value(&body));
    }
    tokio::task::spawn_blocking(move || header.value(&body))
        .await
        .map_err(|_| StoreError::TaskFailed {
            operation: "hashing a part",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_md5_is_base64_of_the_digest() {
        // RFC 1321 test vector: MD5("") = d41d8cd98f00b204e9800998ecf8427e.
        assert_eq!(content_md5(b""), "1B2M2Y8AsgTpgAmY7PhCfg==");
    }

    #[test]
    fn credentials_errors_are_access_denied() {
        for code in [
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied",
        ] {
            let e = classify_answer("PutObject", "k", "b", Some(code), Some(403));
            assert!(matches!(e, StoreError::AccessDenied { .. }), "{code}");
        }
        let e = classify_answer("HeadBucket", "", "b", None, Some(403));
        assert!(matches!(e, StoreError::AccessDenied { .. }));
    }

    #[test]
    fn precondition_failures_mean_the_key_exists() {
        let e = classify_answer("PutObject", "k", "b", Some("PreconditionFailed"), Some(412));
        assert!(matches!(e, StoreError::AlreadyExists { .. }));
        let e = classify_answer("PutObject", "k", "b", None, Some(412));
        assert!(matches!(e, StoreError::AlreadyExists { .. }));
    }

    #[test]
    fn not_implemented_is_unsupported_not_an_answer() {
        let e = classify_answer(
            "ListObjectVersions",
            "p",
            "b",
            Some("NotImplemented"),
            Some(501),
        );
        assert_eq!(
            e,
            StoreError::Unsupported {
                operation: "ListObjectVersions"
            }
        );
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
