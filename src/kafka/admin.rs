//! The admin client, and the offset changes the operator makes for a KIP-875 reset: deleting a sink's
//! consumer group, and writing a tombstone for a source's stored resume token.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use super::{Error, Result, failed};

/// An admin client, shared with blocking threads for librdkafka's blocking metadata calls.
pub type Admin = Arc<AdminClient<DefaultClientContext>>;

/// How long one admin call may wait for the broker.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// An admin client with `client_id`.
pub fn admin(config: &ClientConfig, client_id: &str) -> Result<Admin> {
    config
        .clone()
        .set("client.id", client_id)
        .create()
        .map(Arc::new)
        .map_err(failed("create admin client"))
}

pub fn admin_options() -> AdminOptions {
    AdminOptions::new()
        .operation_timeout(Some(ADMIN_TIMEOUT))
        .request_timeout(Some(ADMIN_TIMEOUT))
}

/// Writes a tombstone for `key` in `topic` (what Kafka Connect writes for a KIP-875 offset reset of a
/// source).
pub async fn write_tombstone(config: &ClientConfig, topic: &str, key: &str) -> Result<()> {
    let producer: FutureProducer = config
        .clone()
        .set("enable.idempotence", "true")
        .create()
        .map_err(failed("create producer"))?;
    producer
        .send(FutureRecord::<str, [u8]>::to(topic).key(key), ADMIN_TIMEOUT)
        .await
        .map_err(|(source, _)| Error {
            operation: "write offset tombstone",
            source,
        })?;
    Ok(())
}

/// Deletes a consumer group (a sink's committed offsets); a group that does not exist is fine.
pub async fn delete_consumer_group(admin: &Admin, group: &str) -> Result<()> {
    let results = admin
        .delete_groups(&[group], &admin_options())
        .await
        .map_err(failed("delete consumer group"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::GroupIdNotFound)) => {}
            Err((_, code)) => {
                return Err(Error {
                    operation: "delete consumer group",
                    source: rdkafka::error::KafkaError::AdminOp(code),
                });
            }
        }
    }
    Ok(())
}
