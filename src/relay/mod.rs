//! One relay pass, written against ports.
//!
//! - `ports`: the traits for TMC, queues and the dedup table, and their error type.
//! - `body`: the SQS message body, attributes, parking records and batch packing (pure).
//! - `biz_key`: the business key (`trade_<tid>`, ...) read from a message's content (pure).
//! - `pass`: the orchestrator: loops, and a batch's verbs (claim, enqueue, park, settle,
//!   confirm).
//! - `lease`: the dedup protocol over the `DedupStore` port: per-batch leases with a
//!   heartbeat, receipts, batched claims and takeovers, with its crash-point tests.
//! - `send`: the SQS stage: per-entry retries, and what an entry's outcome was.
//! - `flow`: flow control: adaptive concurrency limits and attempt timeouts per AWS service.
//! - `offset`: the host clock's offset from the servers', and the check a pass starts with.
//! - `report`: the JSON report.
//! - `stop`: asking a pass to stop consuming (SIGINT/SIGTERM on the command line).
//! - `memory`: in-memory adapters for tests.

pub mod archive;
#[cfg(test)]
mod archive_tests;
pub mod biz_key;
pub mod body;
pub mod flow;
pub mod lease;
#[cfg(test)]
pub(crate) mod memory;
pub mod offset;
pub mod pass;
pub mod ports;
pub mod report;
pub mod send;
pub mod stop;
#[cfg(test)]
mod stop_tests;
#[cfg(test)]
mod tests;

pub use pass::{Mode, PassOptions, Progress, Relay, RelaySettings};
pub use report::{Counts, Report, StopReason};
pub use stop::{Stop, STOP_GRACE};
