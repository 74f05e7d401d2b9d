//! Every deviation of a real store from S3 as AWS documents it, in one place.
//!
//! Each item names the store that needs it and why. The S3 implementation calls these
//! and nothing else store-specific; ops never see a quirk.
//!
//! Quirks that need no code, recorded here so that nobody "fixes" them:
//!
//! * **Garage ignores `If-None-Match: *`** on PutObject and CompleteMultipartUpload: a
//!   second write of a key succeeds. The agent's keys are unique by construction (backup
//!   ids carry time, unit and randomness; verify records a random suffix), which is what
//!   guarantees write-once there. [`super::api::PutMode::Create`] stays the request.
//! * **Garage has no Object Lock**: HeadObject answers without lock fields, which reads
//!   as "not locked" ([`super::api::ObjectLock::default`]).
//! * **moto reports `Initiated` of every multipart upload as a fixed date in 2010**:
//!   the age of an upload is never taken to be older than its backup id, unless the
//!   id is dated in the future (`retention::upload_started`, which knows the id; the
//!   store does not).

use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};

/// **Ceph RGW, MinIO, Garage and older stores reject the SDK's default CRC trailers**
/// (`x-amz-checksum-*` with aws-chunked bodies). Checksums are sent only where an
/// operation requires one; integrity comes from the header `s3.checksum` resolved to
/// (`Content-MD5`, or a CRC as a plain header, never a trailer) on every PutObject and
/// UploadPart, which Object Lock buckets accept.
pub fn checksum_policy() -> (RequestChecksumCalculation, ResponseChecksumValidation) {
    (
        RequestChecksumCalculation::WhenRequired,
        ResponseChecksumValidation::WhenRequired,
    )
}

/// **moto answers a successful CompleteMultipartUpload with XML whose root element is
/// `CompleteMultipartUploadResponse`** instead of `…Result`, which the SDK refuses to
/// parse. A 200 means the store completed the upload; the caller then confirms with
/// HeadObject that the object exists with the expected size before trusting it.
pub fn completion_may_have_succeeded(http_status: Option<u16>) -> bool {
    http_status == Some(200)
}

/// **moto names the root element of its GetBucketVersioning answer
/// `GetBucketVersioningResponse`**, which the SDK cannot read; **some stores do not
/// implement the call**. Both count as "no versioning": the answer only decides how a
/// `null` version id is sent (see [`version_id_to_send`]), and deleting by key on a store
/// whose versioning cannot be read is what it always did.
pub fn versioning_unreadable_means_unversioned(err: &super::api::StoreError) -> bool {
    matches!(
        err,
        super::api::StoreError::Answer { .. } | super::api::StoreError::Unsupported { .. }
    )
}

/// **Garage answers `NotImplemented` (HTTP 501) for ListObjectVersions** and other calls
/// it does not implement. That is "unsupported", not a failure: pruning falls back to one
/// version per listed key.
pub fn is_unsupported(code: Option<&str>, http_status: Option<u16>) -> bool {
    code == Some("NotImplemented") || http_status == Some(501)
}

/// **HEAD answers have no body**, so a missing bucket can be a bare 404 without the
/// `NoSuchBucket` code (stores whose 404 the SDK does not model as `NotFound`): it still
/// means "no such bucket", never an unknown answer.
pub fn head_bucket_missing(http_status: Option<u16>) -> bool {
    http_status == Some(404)
}

/// **AWS refuses a `LocationConstraint` of `us-east-1`** in CreateBucket (it is the
/// default region and must be left out); every other region must be named.
pub fn location_constraint(region: &str) -> Option<&str> {
    (region != "us-east-1").then_some(region)
}

/// **Objects written while versioning was off have the version id `null`**, and stores
/// without versioning (MinIO, moto on an unversioned bucket) refuse a `versionId`
/// parameter altogether. The id is sent only on buckets that keep versions.
pub fn version_id_to_send(version_id: Option<String>, bucket_versioned: bool) -> Option<String> {
    match version_id {
        Some(v) if v == "null" && !bucket_versioned => None,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_version_ids_are_sent_only_to_versioned_buckets() {
        assert_eq!(version_id_to_send(Some("null".into()), false), None);
        assert_eq!(
            version_id_to_send(Some("null".into()), true).as_deref(),
            Some("null")
        );
        assert_eq!(
            version_id_to_send(Some("v1".into()), false).as_deref(),
            Some("v1")
        );
    }

    #[test]
    fn not_implemented_is_unsupported() {
        assert!(is_unsupported(Some("NotImplemented"), Some(501)));
        assert!(is_unsupported(None, Some(501)));
        assert!(!is_unsupported(Some("InternalError"), Some(500)));
    }
}
