//! Every name the operator and its pods agree on: labels, annotations, object names, consumer groups,
//! offset keys, Kafka client ids and ports (and the one size both ends count on: the context headers').
//! Both ends import them from here, so a name changes in one place.

use std::collections::BTreeMap;

/// Label of every task pod and task ConfigMap: the Connector's name.
pub const LABEL_CONNECTOR: &str = "sluice.dev/connector";
/// Label of a task pod: its task id.
pub const LABEL_TASK: &str = "sluice.dev/task";
/// Label of every replay pod: the DeadLetterQueue's name.
pub const LABEL_DEAD_LETTER_QUEUE: &str = "sluice.dev/dead-letter-queue";
/// Label of a replay pod: the replay's id.
pub const LABEL_REPLAY: &str = "sluice.dev/replay";

/// Annotation of a task pod: the hash of its config and pod spec; a different hash replaces the pod.
pub const ANNOTATION_CONFIG_HASH: &str = "sluice.dev/config-hash";
/// Set to a new value to rotate a source's offset partition name (any time) — the on-demand rotation.
pub const ANNOTATION_ROTATE_OFFSETS: &str = "sluice.dev/rotate-offsets";
/// Set to a new value while `spec.state` is `stopped` to delete the Connector's offsets (KIP-875).
pub const ANNOTATION_RESET_OFFSETS: &str = "sluice.dev/reset-offsets";

/// Port of a task's HTTP server (`/metrics`, `/v1/status`, `/healthz`).
pub const TASK_HTTP_PORT: u16 = 8080;
/// Where a pod mounts its config and Secret material.
pub const CONFIG_DIR: &str = "/etc/sluice";
/// The offsets topic of sources that name none.
pub const DEFAULT_OFFSET_TOPIC: &str = "sluice-offsets";
/// The prefix of the context headers of a dead-letter record (Kafka Connect's `__connect.errors.*`).
pub const DEAD_LETTER_HEADER_PREFIX: &str = "__connect.errors.";

/// The header sluice adds to every dead letter: when it was dead-lettered (milliseconds since the epoch,
/// as decimal text). A dead letter keeps its record's timestamp, as Kafka Connect's do, so this is what
/// DeadLetterQueue inspection and replay `from`/`to` filters go by.
pub const DEAD_LETTERED_AT_HEADER: &str = "sluice.deadletter.timestamp";

/// The most bytes the context headers of one dead-letter record take (tasks cut them to it; a
/// DeadLetterQueue's topic makes room for it).
pub const CONTEXT_HEADERS_MAX_BYTES: usize = 16 * 1024;
/// The Kafka client id of everything the operator itself connects with.
pub const OPERATOR_CLIENT_ID: &str = "sluice-operator";
/// The consumer group the operator inspects dead-letter topics with (it never commits).
pub const INSPECTION_GROUP: &str = "sluice-operator-dlq-inspection";
/// The Kafka client id of `sluice` at a terminal (`dlq peek`).
pub const CLI_CLIENT_ID: &str = "sluice-cli";
/// The consumer group `sluice dlq peek` reads dead-letter topics with (it never commits).
pub const PEEK_GROUP: &str = "sluice-cli-dlq-peek";
/// The consumer group a source reads its stored offset with (it never commits).
pub const OFFSET_READER_GROUP: &str = "sluice-offset-reader";

/// The ConfigMap holding every task's config of a Connector.
pub fn task_config_map(connector: &str) -> String {
    format!("{connector}-tasks")
}

/// The key of task `task_id`'s config in that ConfigMap.
pub fn task_config_key(task_id: u32) -> String {
    format!("task-{task_id}.yaml")
}

/// The pod of task `task_id` of a Connector.
pub fn task_pod(connector: &str, task_id: u32) -> String {
    format!("{connector}-task-{task_id}")
}

/// The labels of every object the operator makes for a Connector's tasks.
pub fn task_labels(connector: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "sluice-task".into()),
        ("app.kubernetes.io/instance".into(), connector.into()),
        ("app.kubernetes.io/managed-by".into(), "sluice".into()),
        (LABEL_CONNECTOR.into(), connector.into()),
    ])
}

/// The pod of replay `id` of a DeadLetterQueue.
pub fn replay_pod(dead_letter_queue: &str, id: &str) -> String {
    format!("{dead_letter_queue}-replay-{id}")
}

/// The labels of a replay pod.
pub fn replay_labels(dead_letter_queue: &str, id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "sluice-replay".into()),
        (
            "app.kubernetes.io/instance".into(),
            dead_letter_queue.into(),
        ),
        ("app.kubernetes.io/managed-by".into(), "sluice".into()),
        (LABEL_DEAD_LETTER_QUEUE.into(), dead_letter_queue.into()),
        (LABEL_REPLAY.into(), id.into()),
    ])
}

/// The consumer group of the sink Connector `connector` in `namespace`: `spec.sink.consumerGroupId`, else
/// `sluice-<namespace>-<connector>` (Kafka Connect's is `connect-<name>`).
pub fn sink_consumer_group(namespace: &str, connector: &str, chosen: Option<&str>) -> String {
    chosen.map_or_else(|| format!("sluice-{namespace}-{connector}"), String::from)
}

/// The consumer group (and `transactional.id`) of replay `id` of a DeadLetterQueue: it holds the
/// replay's progress.
pub fn replay_group(namespace: &str, dead_letter_queue: &str, id: &str) -> String {
    format!("sluice-replay.{namespace}.{dead_letter_queue}.{id}")
}

/// Kafka Connect's offset key for a connector and partition name. The connector is named
/// `<namespace>/<name>`: one Kafka cluster (and offsets topic) serves Connectors of many namespaces.
pub fn source_offset_key(namespace: &str, connector: &str, partition_name: &str) -> String {
    serde_json::json!([format!("{namespace}/{connector}"), { "ns": partition_name }]).to_string()
}

/// The partition name of a [`source_offset_key`] of connector `<namespace>/<connector>`; `None` for
/// another connector's key or a key of another form.
pub fn offset_key_partition(key: &[u8], namespace: &str, connector: &str) -> Option<String> {
    let key: serde_json::Value = serde_json::from_slice(key).ok()?;
    (key[0].as_str()? == format!("{namespace}/{connector}"))
        .then(|| key[1]["ns"].as_str().map(String::from))?
}

/// The Kafka client id of task `task_id`'s main client (sink consumer, source producer).
pub fn task_client_id(connector: &str, task_id: u32) -> String {
    format!("sluice-{connector}-{task_id}")
}

/// The `transactional.id` of an exactly-once source task: stable across restarts, pods and offset
/// rotations, so a new instance of the task fences every older one (Kafka Connect's is
/// `<group.id>-<connector>-<task>`).
pub fn transactional_id(namespace: &str, connector: &str, task_id: u32) -> String {
    format!("sluice/{namespace}/{connector}/{task_id}")
}

/// The application name a task gives MongoDB (`appName`, in its logs, `currentOp` and the profiler),
/// unless the connection string names one: `sluice/<namespace>/<connector>/<task>`, cut to MongoDB's 128
/// bytes.
pub fn mongodb_app_name(namespace: &str, connector: &str, task_id: u32) -> String {
    let mut name = format!("sluice/{namespace}/{connector}/{task_id}");
    while name.len() > 128 {
        name.pop();
    }
    name
}

/// The Kafka client id of task `task_id`'s dead-letter producer.
pub fn dead_letter_client_id(connector: &str, task_id: u32) -> String {
    format!("sluice-{connector}-{task_id}-dlq")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_s_mongodb_app_name_names_it_within_128_bytes() {
        assert_eq!(
            mongodb_app_name("shop", "orders", 2),
            "sluice/shop/orders/2"
        );
        let long = "c".repeat(253);
        assert_eq!(mongodb_app_name("shop", &long, 0).len(), 128);
    }

    #[test]
    fn names_follow_the_documented_patterns() {
        assert_eq!(task_pod("orders", 1), "orders-task-1");
        assert_eq!(task_config_map("orders"), "orders-tasks");
        assert_eq!(task_config_key(0), "task-0.yaml");
        assert_eq!(replay_pod("orders-dlq", "fix-1"), "orders-dlq-replay-fix-1");
        assert_eq!(
            sink_consumer_group("shop", "orders", None),
            "sluice-shop-orders"
        );
        assert_eq!(
            sink_consumer_group("shop", "orders", Some("connect-orders")),
            "connect-orders"
        );
        assert_eq!(
            replay_group("shop", "orders-dlq", "fix-1"),
            "sluice-replay.shop.orders-dlq.fix-1"
        );
        assert_eq!(
            source_offset_key("shop", "orders", "orders.2"),
            r#"["shop/orders",{"ns":"orders.2"}]"#
        );
        let key = source_offset_key("shop", "orders", "orders.2");
        assert_eq!(
            offset_key_partition(key.as_bytes(), "shop", "orders").as_deref(),
            Some("orders.2")
        );
        assert_eq!(offset_key_partition(key.as_bytes(), "shop", "other"), None);
        assert_eq!(offset_key_partition(b"not json", "shop", "orders"), None);
    }
}
