//! AWS adapters for the relay's ports. SDK types stop here: the relay sees `Outgoing`,
//! `EntryOutcome`, `ClaimOutcome` and `PortError`.
//!
//! - `sqs`: the relay and parking queues (`SendMessageBatch`).
//! - `dynamo`: the dedup table (conditional `PutItem`, `BatchWriteItem`, `DeleteItem`).
//! - `s3`: the archive bucket (`PutObject`, one object per batch).
//! - `errors`: SDK errors → `Severity`.
//! - `clock`: the host clock's offset from DynamoDB's, from the `Date` of its answers.

pub mod clock;
pub mod dynamo;
pub mod errors;
pub mod s3;
pub mod sqs;

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

use crate::relay::ports::{PortError, Usage};

/// Request and capacity counters an adapter keeps (capacity in thousandths of a unit).
#[derive(Debug, Default)]
pub struct Meter {
    requests: AtomicU64,
    write_milli_units: AtomicU64,
    read_milli_units: AtomicU64,
}

impl Meter {
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn capacity(&self, write: f64, read: f64) {
        self.write_milli_units
            .fetch_add((write * 1000.0).round() as u64, Ordering::Relaxed);
        self.read_milli_units
            .fetch_add((read * 1000.0).round() as u64, Ordering::Relaxed);
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn write_units(&self) -> f64 {
        self.write_milli_units.load(Ordering::Relaxed) as f64 / 1000.0
    }

    pub fn read_units(&self) -> f64 {
        self.read_milli_units.load(Ordering::Relaxed) as f64 / 1000.0
    }
}

/// Sums what several adapters used.
pub fn usage(sqs: &[&Meter], dynamo: &Meter) -> Usage {
    Usage {
        sqs_requests: sqs.iter().map(|m| m.requests()).sum(),
        dynamodb_requests: dynamo.requests(),
        dynamodb_write_units: dynamo.write_units(),
        dynamodb_read_units: dynamo.read_units(),
    }
}

/// Awaits an SDK call until `deadline` (the attempt deadline flow control gave it); no answer
/// by then is an unknown outcome: the request may have been carried out.
pub async fn within<T>(
    deadline: Instant,
    operation: &'static str,
    call: impl std::future::Future<Output = T>,
) -> Result<T, PortError> {
    let started = Instant::now();
    tokio::time::timeout_at(deadline, call)
        .await
        .map_err(|_| PortError::timed_out(operation, started.elapsed()))
}
