//! `configure`: validate, check the bucket, then store — all or nothing.
//!
//! The previous configuration stays in force unless the new one is valid *and* its
//! bucket is usable, so a typo in a relation never leaves the unit without backups of
//! the old, working kind silently replaced by a broken one.

use std::sync::Arc;

use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use serde_json::{json, Value};

use super::AgentState;
use crate::config::AgentConfig;
use crate::error::OpError;
use crate::s3::{S3Error, Store};

pub async fn run(state: &Arc<AgentState>, raw: Value) -> Result<Value, OpError> {
    // One configure at a time: the stored file and the live configuration must agree.
    let _serial = state.configuring.lock().await;
    // Validation stats the cli and TLS files: small blocking I/O, kept off the runtime.
    let config = tokio::task::spawn_blocking(move || AgentConfig::from_params(raw))
        .await
        .map_err(|e| OpError::Internal(e.to_string()))??;
    let mut bucket_created = false;
    if let Some(s3) = &config.s3 {
        let store = Store::new(s3)?;
        bucket_created = ensure_bucket(&store, s3.region()).await?;
    }
    let dir = state.state_dir.clone();
    let to_store = config.clone();
    tokio::task::spawn_blocking(move || to_store.store(&dir))
        .await
        .map_err(|e| OpError::Internal(e.to_string()))??;
    let result = json!({
        "configured": true,
        "cluster": config.cluster,
        "s3-configured": config.s3.is_some(),
        "bucket": config.s3.as_ref().map(|s| s.bucket.clone()),
        "bucket-created": bucket_created,
        "valkey-source": config.valkey.source.as_str(),
    });
    state.set_config(config);
    Ok(result)
}

/// Makes sure the bucket exists: HeadBucket, and CreateBucket when it is missing.
/// Returns whether it was created.
pub async fn ensure_bucket(store: &Store, region: &str) -> Result<bool, S3Error> {
    match store
        .client
        .head_bucket()
        .bucket(&store.bucket)
        .send()
        .await
    {
        Ok(_) => return Ok(false),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {}
        Err(e) => {
            return Err(match store.classify("HeadBucket", "", e) {
                // HEAD answers have no body: a bare 404 means "no such bucket".
                S3Error::Other { detail, .. } if detail.contains("404") => S3Error::NoBucket {
                    bucket: store.bucket.clone(),
                },
                other => other,
            });
        }
    }
    let mut req = store.client.create_bucket().bucket(&store.bucket);
    if region != "us-east-1" {
        req = req.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(region))
                .build(),
        );
    }
    match req.send().await {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_bucket_already_owned_by_you()) =>
        {
            Ok(false)
        }
        Err(e) => Err(match store.classify("CreateBucket", "", e) {
            S3Error::AccessDenied { detail } | S3Error::Other { detail, .. } => {
                S3Error::CannotCreateBucket {
                    bucket: store.bucket.clone(),
                    detail,
                }
            }
            other => other,
        }),
    }
}
