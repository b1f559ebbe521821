//! tmc-relay moves Taobao Open Platform (TOP) message-service (TMC) messages into Amazon SQS,
//! confirming to TMC only what SQS has safely accepted.
//!
//! # Layout
//!
//! - [`top`]: the TOP client: signing, request building, response envelopes, errors and the typed
//!   `taobao.tmc.*` / `taobao.jushita.jms.*` calls.
//! - [`relay`]: one relay pass (consume → claim → enqueue → park → settle → confirm) written
//!   against ports, with its dedup protocol (`relay::lease`) and flow control (`relay::flow`).
//! - [`aws`]: the SQS and DynamoDB adapters behind the relay's ports.
//! - [`parked`]: the operator's `parked` commands: list, show, redrive and purge parked messages.
//! - [`config`]: environment configuration, read and validated once at start.
//! - [`invocation`]: the Lambda event / backfill payload and how it overrides the configuration.
//! - [`wiring`]: the one place where configuration becomes real clients and a relay.
//! - [`telemetry`]: tracing setup and the CloudWatch Embedded Metric Format line.
//! - [`signals`]: SIGINT/SIGTERM for the local servers and the command line's pass.

pub mod aws;
pub mod config;
pub mod invocation;
pub mod parked;
pub mod relay;
pub mod signals;
pub mod telemetry;
pub mod top;
pub mod wiring;
