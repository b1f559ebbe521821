//! tmc-relay moves Taobao Open Platform (TOP) message-service (TMC) messages into Amazon SQS,
//! confirming to TMC only what SQS has safely accepted.
//!
//! This crate is the product: the Lambda (`src/bin/bootstrap.rs`) and the operator's command
//! line (`src/bin/tmc-relay.rs`) are built from it and nothing else. The test rig lives in the
//! workspace's `tools/` (the TMC simulator, the AWS stand-in, the chaos harness and the
//! benchmark); `docs/layout.md` maps the whole repository.
//!
//! # Layout
//!
//! - [`top`]: the TOP client: signing, request building, response envelopes, errors and the typed
//!   `taobao.tmc.*` / `taobao.jushita.jms.*` calls.
//! - [`relay`]: one relay pass (consume → claim → enqueue → park → settle → confirm) written
//!   against ports (`relay::ports`): the pass and its consume loops (`relay::pass`), one
//!   batch's way (`relay::pass::batch`), the dedup protocol (`relay::lease`), flow control
//!   (`relay::flow`), the archive (`relay::archive`) and in-memory ports for its unit tests.
//! - [`aws`]: the SQS, DynamoDB and S3 adapters behind the relay's ports.
//! - [`parked`]: the operator's `parked` commands: list, show, redrive and purge parked messages.
//! - [`replay`]: the operator's `replay` command: archived messages sent again.
//! - [`config`]: environment configuration, read and validated once at start.
//! - [`invocation`]: the Lambda event / backfill payload and how it overrides the configuration.
//! - [`wiring`]: the one place where configuration becomes real clients and a relay.
//! - [`telemetry`]: tracing setup and the CloudWatch Embedded Metric Format line.
//! - [`signals`]: SIGINT/SIGTERM for the command line's pass.

pub mod aws;
pub mod config;
pub mod invocation;
pub mod parked;
pub mod relay;
pub mod replay;
pub mod signals;
pub mod telemetry;
pub mod top;
pub mod wiring;
