//! The Taobao Open Platform client.
//!
//! - `sign`: the three signature methods, pure.
//! - `clock`: GMT+8 wire time.
//! - `envelope`: response decoding, in one place.
//! - `error`: `TopError` and its classification.
//! - `message`: `TmcMessage` with exact 64-bit ids.
//! - `client`: HTTP, signing, retries. `api`: one typed call per method.
//! - `fuzz` (tests): property tests feeding the decoders arbitrary bodies and texts.

pub mod api;
pub mod client;
pub mod clock;
pub mod envelope;
pub mod error;
#[cfg(test)]
mod fuzz;
pub mod message;
mod secret;
pub mod sign;

pub use client::{Clock, RetryPolicy, TopClient, TopConfig};
pub use error::{ErrorClass, TopError};
pub use message::TmcMessage;
pub use secret::Secret;
pub use sign::SignMethod;
