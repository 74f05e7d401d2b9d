//! The storage seam: one narrow interface between the agent and an object store.
//!
//! Every operation reaches the bucket through [`ObjectStore`] and nothing else, so the
//! same code runs on S3 ([`s3::S3Store`], the only module that knows the AWS SDK), on
//! memory in tests ([`memory::InMemory`]) and behind a fault injector
//! ([`fault::Faulty`]) that makes a chosen call fail, before or after it took effect.
//!
//! The interface states the guarantees the product relies on as data, not as headers:
//!
//! * write-once is [`PutMode::Create`]; a store that already holds the key answers
//!   [`StoreError::AlreadyExists`] (S3: `If-None-Match: *` refused). Where a store ignores
//!   the condition (see [`compat`]), unique keys are what keeps objects from being
//!   overwritten;
//! * a multipart upload becomes visible only when it is completed, and a
//!   [`multipart::PartWriter`] owns cutting equal parts, bounded concurrency
//!   (backpressure on the writer) and abort;
//! * a listing is a sequence of pages walked by one paginator, [`collect_pages`], which
//!   refuses a store that answers "truncated" without moving on (it would loop forever);
//! * errors are classified once, into [`StoreError`], by the implementation.
//!
//! Quirks of particular stores live in [`compat`], each with the store that needs it.

pub mod api;
pub mod attempts;
pub mod compat;
pub mod fault;
pub mod memory;
pub mod multipart;
pub mod s3;

pub use api::*;
pub use multipart::{put_multipart, PartWriter, Uploaded};
