//! Part-size planning for multipart uploads.
//!
//! S3 allows at most 10,000 parts per upload and, on many stores, requires every part but
//! the last to have the same size. The stream's length is unknown until it ends, so the
//! planner sizes parts from an estimate (the server's `used_memory`, doubled for safety)
//! and never goes below the configured part size. The memory the agent needs is
//! `part size × (upload concurrency + 1)`: the parts in flight plus the one being filled.

/// The most parts one multipart upload may have.
pub const MAX_PARTS: u64 = 10_000;
/// S3's smallest non-final part.
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// The default part size, S3's smallest: with [`DEFAULT_CONCURRENCY`] the part buffers
/// take 15 MiB, which keeps the whole agent under 32 MiB during a backup (it runs beside
/// the server it backs up, on the server's memory). It covers a 48 GiB snapshot (24 GiB
/// of `used_memory`, doubled) before the planner grows it.
pub const DEFAULT_PART_SIZE: u64 = MIN_PART_SIZE;
/// Parts uploaded at once by default: on a store near the unit, two in flight keep the
/// upload ahead of the snapshot; a distant store wants more (memory grows by one part
/// size per upload).
pub const DEFAULT_CONCURRENCY: usize = 2;

const MIB: u64 = 1024 * 1024;

/// The plan for one upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartPlan {
    /// Size of every part but the last.
    pub part_size: u64,
    /// Parts uploaded concurrently.
    pub concurrency: usize,
}

impl PartPlan {
    /// Chooses a part size for a stream estimated at `estimate` bytes.
    pub fn new(configured_part_size: u64, concurrency: usize, estimate: Option<u64>) -> Self {
        let mut part_size = configured_part_size.clamp(MIN_PART_SIZE, MAX_PART_SIZE);
        if let Some(estimate) = estimate {
            // Twice the estimate must fit in MAX_PARTS parts; round up to whole MiB.
            let needed = estimate.saturating_mul(2).div_ceil(MAX_PARTS);
            let needed = needed.div_ceil(MIB).saturating_mul(MIB);
            part_size = part_size.max(needed).min(MAX_PART_SIZE);
        }
        PartPlan {
            part_size,
            concurrency: concurrency.max(1),
        }
    }

    /// Upper bound of the memory held in part buffers.
    pub fn memory_bound(&self) -> u64 {
        self.part_size * (self.concurrency as u64 + 1)
    }

    /// The largest stream this plan can store.
    #[cfg(test)]
    fn capacity(&self) -> u64 {
        self.part_size.saturating_mul(MAX_PARTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_part_size_holds_for_small_datasets() {
        let p = PartPlan::new(DEFAULT_PART_SIZE, DEFAULT_CONCURRENCY, Some(4 << 30));
        assert_eq!(p.part_size, DEFAULT_PART_SIZE);
        assert_eq!(p.memory_bound(), 15 * MIB);
    }

    #[test]
    fn part_size_grows_so_twice_the_estimate_fits_in_10000_parts() {
        for est in [100u64 << 30, 1 << 40, 3 << 40] {
            let p = PartPlan::new(DEFAULT_PART_SIZE, 3, Some(est));
            assert!(p.capacity() >= 2 * est, "estimate {est}");
            assert_eq!(p.part_size % MIB, 0);
        }
    }

    #[test]
    fn part_size_stays_within_s3_limits() {
        assert_eq!(PartPlan::new(1, 1, None).part_size, MIN_PART_SIZE);
        assert_eq!(
            PartPlan::new(u64::MAX, 1, Some(u64::MAX)).part_size,
            MAX_PART_SIZE
        );
        assert_eq!(PartPlan::new(DEFAULT_PART_SIZE, 0, None).concurrency, 1);
    }
}
