//! A transactional producer (KIP-98), as an exactly-once source uses it: what it sends between
//! [`Transactional::begin`] and [`Transactional::commit`] becomes visible to `read_committed` consumers at
//! once or not at all.
//!
//! librdkafka's transaction calls block (the commit flushes what is in flight first), so each runs on a
//! blocking thread. [`Transactional::init`] takes over the `transactional.id`: the broker bumps its epoch,
//! which fences every older producer with that id (their next send or commit fails with a fatal fenced
//! error), and aborts the transaction an older one left open, so its records never become visible.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;

/// How long one transaction call may take (librdkafka retries inside it).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A producer with a `transactional.id`.
#[derive(Clone)]
pub struct Transactional {
    producer: FutureProducer,
}

impl Transactional {
    /// A producer for `config`, which must set `transactional.id` (not yet initialised: call
    /// [`Self::init`]).
    pub fn new(config: &ClientConfig) -> KafkaResult<Self> {
        Ok(Self {
            producer: config.create()?,
        })
    }

    /// The producer to send with inside a transaction (a clone shares the one librdkafka handle).
    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Registers the `transactional.id`, fencing older instances and aborting what they left open.
    pub async fn init(&self) -> KafkaResult<()> {
        self.call(|p| p.init_transactions(CALL_TIMEOUT)).await
    }

    pub async fn begin(&self) -> KafkaResult<()> {
        self.call(|p| p.begin_transaction()).await
    }

    /// Flushes what was sent and commits it.
    pub async fn commit(&self) -> KafkaResult<()> {
        self.call(|p| p.commit_transaction(CALL_TIMEOUT)).await
    }

    /// Aborts the open transaction: what it sent is purged or marked aborted.
    pub async fn abort(&self) -> KafkaResult<()> {
        self.call(|p| p.abort_transaction(CALL_TIMEOUT)).await
    }

    async fn call(
        &self,
        op: impl FnOnce(&FutureProducer) -> KafkaResult<()> + Send + 'static,
    ) -> KafkaResult<()> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || op(&producer))
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }
}

/// Whether an error says a newer producer took over the `transactional.id`.
pub fn is_fenced(err: &KafkaError) -> bool {
    err.rdkafka_error_code().is_some_and(|code| {
        matches!(
            code,
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
        )
    })
}

/// Whether a transaction call failed for good: the producer is unusable (fenced, or another fatal error).
pub fn is_fatal(err: &KafkaError) -> bool {
    match err {
        KafkaError::Transaction(e) => e.is_fatal(),
        _ => is_fenced(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fenced_errors_are_recognised_in_every_form() {
        for code in [
            RDKafkaErrorCode::Fenced,
            RDKafkaErrorCode::ProducerFenced,
            RDKafkaErrorCode::InvalidProducerEpoch,
        ] {
            let err = KafkaError::MessageProduction(code);
            assert!(is_fenced(&err) && is_fatal(&err), "{code:?}");
        }
        let timeout = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert!(!is_fenced(&timeout) && !is_fatal(&timeout));
    }
}
