//! What the integration tests share, by concern:
//! - [`env`]: the loopback environment's coordinates and the fault peer's control API;
//! - [`kube`]: CRDs, kubectl, Secrets, Events, and the harness that gives each test a namespace of its own
//!   ([`kube::setup`], [`kube::namespace`]): always deleted, with the pods' state and output printed on failure;
//! - [`kafka`]: topics and readers;
//! - [`connect`]: a standalone Kafka Connect worker with the MongoDB connector (the comparisons with Connect);
//! - [`processes`]: the operator and task processes a test runs;
//! - [`waiting`]: polling with a deadline, and checking that something keeps holding.
#![allow(dead_code, unused_imports)] // each test crate uses a different part of this module

pub mod connect;
pub mod env;
pub mod kafka;
pub mod kube;
pub mod processes;
pub mod waiting;

pub use self::env::Env;
pub use self::kafka::*;
pub use self::kube::*;
pub use self::processes::*;
pub use self::waiting::*;

/// A name unique to this test run: `<prefix>-<random>`, valid as a namespace, topic or database name.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// Merges `extra` into `base` (objects key by key; anything else replaces).
pub fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
    match (base, extra) {
        (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}
