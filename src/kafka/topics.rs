//! Topics as the broker has them: describe (partitions, replication, non-default configs), and bring one to
//! what is wanted (create, grow partitions — never shrink —, alter configs). sluice never relies on the
//! broker's auto-creation.

use std::collections::BTreeMap;

use rdkafka::admin::{
    AlterConfig, ConfigEntry, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::types::RDKafkaErrorCode;

use super::admin::{ADMIN_TIMEOUT, Admin, admin_options};
use super::{Result, failed};
use crate::crd::dead_letter_queue::TopicStatus;

/// A topic's partition count and replication factor, or `None` if it does not exist.
pub async fn metadata(admin: &Admin, topic: &str) -> Result<Option<(i32, i32)>> {
    let admin = admin.clone();
    let topic = topic.to_string();
    // librdkafka's metadata call blocks; keep it off the async workers.
    let metadata = tokio::task::spawn_blocking(move || {
        admin.inner().fetch_metadata(Some(&topic), ADMIN_TIMEOUT)
    })
    .await
    .expect("metadata task panicked")
    .map_err(failed("fetch metadata"))?;
    Ok(metadata.topics().first().and_then(|t| {
        if t.error().is_some() || t.partitions().is_empty() {
            None
        } else {
            let replicas = t.partitions()[0].replicas().len() as i32;
            Some((t.partitions().len() as i32, replicas))
        }
    }))
}

/// A topic with its non-default configs, or `None` if it does not exist.
pub async fn describe(admin: &Admin, topic: &str) -> Result<Option<TopicStatus>> {
    let Some((partitions, replicas)) = metadata(admin, topic).await? else {
        return Ok(None);
    };
    let config = configs(admin, topic)
        .await?
        .into_iter()
        .filter(|e| !e.is_default)
        .filter_map(|e| Some((e.name, e.value?)))
        .collect();
    Ok(Some(TopicStatus {
        name: topic.into(),
        partitions,
        replication_factor: Some(replicas),
        config,
    }))
}

/// The largest record a topic takes (`max.message.bytes`, its own or the broker's default); `None` when the
/// topic does not exist or does not say.
pub async fn max_message_bytes(admin: &Admin, topic: &str) -> Result<Option<i64>> {
    Ok(configs(admin, topic)
        .await?
        .into_iter()
        .find(|e| e.name == "max.message.bytes")
        .and_then(|e| e.value?.parse().ok()))
}

/// Every config entry of a topic (none when it does not exist).
async fn configs(admin: &Admin, topic: &str) -> Result<Vec<ConfigEntry>> {
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &admin_options())
        .await
        .map_err(failed("describe configs"))?;
    Ok(match described.into_iter().next() {
        Some(Ok(resource)) => resource.entries,
        _ => Vec::new(),
    })
}

/// A topic as wanted: at least `partitions`, these configs, and (when it is created) this replication
/// factor (`-1`: the broker's default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WantedTopic {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub configs: BTreeMap<String, String>,
}

/// Why the broker did not make a topic as wanted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The broker's code, and the configs it rejects on their own (`key=value`; see [`rejected_configs`]).
    Create(RDKafkaErrorCode, Vec<String>),
    /// Created, but its metadata is not there yet.
    Pending,
    GrowPartitions(RDKafkaErrorCode),
    Configs(RDKafkaErrorCode, Vec<String>),
    /// It disappeared while being updated.
    Missing,
}

/// The configs whose broker value differs from what is wanted, as `key=wanted (broker: actual)`.
pub fn config_drift(
    wanted: &BTreeMap<String, String>,
    actual: &BTreeMap<String, String>,
) -> Vec<String> {
    wanted
        .iter()
        .filter(|(k, v)| actual.get(*k) != Some(*v))
        .map(|(k, v)| {
            format!(
                "{k}={v} (broker: {})",
                actual.get(k).map_or("default", String::as_str)
            )
        })
        .collect()
}

/// Creates the topic, or grows its partitions and alters its configs to what is wanted; returns it as the
/// broker has it then.
pub async fn ensure(
    admin: &Admin,
    wanted: &WantedTopic,
) -> Result<std::result::Result<TopicStatus, Refused>> {
    let topic = wanted.name.as_str();
    let opts = admin_options();
    let Some(current) = describe(admin, topic).await? else {
        if let Some(code) = create(admin, wanted).await? {
            let rejected = rejected_configs(admin, wanted, code).await?;
            return Ok(Err(Refused::Create(code, rejected)));
        }
        return Ok(describe(admin, topic).await?.ok_or(Refused::Pending));
    };
    if current.partitions < wanted.partitions {
        let grow = NewPartitions::new(topic, wanted.partitions as usize);
        let result = admin
            .create_partitions([&grow], &opts)
            .await
            .map_err(failed("create partitions"))?;
        if let Some(Err((_, code))) = result.into_iter().next() {
            return Ok(Err(Refused::GrowPartitions(code)));
        }
    }
    if !config_drift(&wanted.configs, &current.config).is_empty() {
        let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
        for (k, v) in &wanted.configs {
            alter = alter.set(k, v);
        }
        let result = admin
            .alter_configs([&alter], &opts)
            .await
            .map_err(failed("alter configs"))?;
        if let Some(Err((_, code))) = result.into_iter().next() {
            let rejected = rejected_configs(admin, wanted, code).await?;
            return Ok(Err(Refused::Configs(code, rejected)));
        }
    }
    Ok(describe(admin, topic).await?.ok_or(Refused::Missing))
}

/// The configs of `wanted` that the broker rejects on their own, as `key=value`, when it refused with
/// `code` for an invalid config (none otherwise). The broker's reply names no key (and rdkafka's
/// `TopicResult` keeps only its code), so each config is tried alone in a validate-only create of a topic
/// that is never made.
async fn rejected_configs(
    admin: &Admin,
    wanted: &WantedTopic,
    code: RDKafkaErrorCode,
) -> Result<Vec<String>> {
    if code != RDKafkaErrorCode::InvalidConfig {
        return Ok(Vec::new());
    }
    let opts = admin_options().validate_only(true);
    let mut rejected = Vec::new();
    for (k, v) in &wanted.configs {
        let new = NewTopic::new(CONFIG_CHECK_TOPIC, 1, TopicReplication::Fixed(-1)).set(k, v);
        let result = admin
            .create_topics([&new], &opts)
            .await
            .map_err(failed("validate topic config"))?;
        if let Some(Err((_, code))) = result.into_iter().next()
            && code != RDKafkaErrorCode::TopicAlreadyExists
        {
            rejected.push(format!("{k}={v}"));
        }
    }
    Ok(rejected)
}

/// The topic name of [`rejected_configs`]' validate-only creates.
const CONFIG_CHECK_TOPIC: &str = "__sluice-config-check";

/// Creates the topic unless it exists; `Some(code)` when the broker refused.
pub async fn create(admin: &Admin, wanted: &WantedTopic) -> Result<Option<RDKafkaErrorCode>> {
    let mut new = NewTopic::new(
        &wanted.name,
        wanted.partitions,
        TopicReplication::Fixed(wanted.replication_factor),
    );
    for (k, v) in &wanted.configs {
        new = new.set(k, v);
    }
    let result = admin
        .create_topics([&new], &admin_options())
        .await
        .map_err(failed("create topic"))?;
    Ok(match result.into_iter().next() {
        Some(Err((_, code))) if code != RDKafkaErrorCode::TopicAlreadyExists => Some(code),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_names_the_wanted_and_the_broker_value() {
        let wanted = BTreeMap::from([
            ("retention.ms".to_string(), "1000".to_string()),
            ("cleanup.policy".to_string(), "delete".to_string()),
        ]);
        let actual = BTreeMap::from([("cleanup.policy".to_string(), "delete".to_string())]);
        assert_eq!(
            config_drift(&wanted, &actual),
            ["retention.ms=1000 (broker: default)"]
        );
        assert!(config_drift(&actual, &actual).is_empty());
    }
}
