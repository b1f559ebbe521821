//! One relay pass, written against ports.
//!
//! - `ports`: the traits for TMC, queues and the dedup table, and their error type.
//! - `body`: the SQS message body, attributes, parking records and batch packing (pure).
//! - `biz_key`: the business key (`trade_<tid>`, ...) read from a message's content (pure).
//! - `pass`: the orchestrator: loops, claims, sends, parks, completes, confirms.
//! - `report`: the JSON report.
//! - `memory`: in-memory adapters for tests.

pub mod biz_key;
pub mod body;
pub mod memory;
pub mod pass;
pub mod ports;
pub mod report;
#[cfg(test)]
mod tests;

pub use pass::{Mode, PassOptions, Progress, Relay, RelaySettings};
pub use report::{Counts, Report, StopReason};
