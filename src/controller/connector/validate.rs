//! Whether a Connector's spec can be used now (no I/O): its Secrets and keys exist, its DeadLetterQueue
//! exists, its pipeline is a JSON array, librdkafka compiles its topicsRegex, the topics it needs exist.
//! The first thing that is wrong is a [`Problem`]; otherwise what the spec resolves to.

use kube::ResourceExt;

use super::dereference::Dereferenced;
use crate::controller::{Problem, reason};
use crate::crd::Connector;
use crate::kafka::Clients;
use crate::wire::TaskKafka;

/// What the spec points at, resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    pub dead_letter_topic: Option<String>,
    pub context_headers_enable: bool,
}

/// A spec that can be used.
pub struct Validated {
    pub resolved: Resolved,
    /// The operator's Kafka client settings for this Connector's cluster (with credentials: never logged).
    pub kafka: Clients,
}

pub fn validate(conn: &Connector, found: &Dereferenced) -> Result<Validated, Problem> {
    let uri = &conn.spec.mongodb.connection_uri_secret_ref;
    found
        .secrets
        .value(&uri.name, &uri.key, "spec.mongodb.connectionUriSecretRef")?;
    let creds = found
        .secrets
        .kafka_credentials(&conn.spec.kafka, "spec.kafka")?;
    let errors = &conn.spec.errors;
    let mut resolved = Resolved {
        dead_letter_topic: errors.dead_letter_queue_topic.clone(),
        context_headers_enable: errors.context_headers_enable.unwrap_or(false),
    };
    if let Some(r) = &errors.dead_letter_queue_ref {
        let Some(dlq) = &found.dead_letter_queue else {
            return Err(Problem::new(
                reason::DEAD_LETTER_QUEUE_NOT_FOUND,
                format!(
                    "DeadLetterQueue {}/{} (spec.errors.deadLetterQueueRef) not found",
                    conn.namespace().unwrap_or_default(),
                    r.name
                ),
            ));
        };
        resolved.dead_letter_topic = Some(
            dlq.spec
                .topic_name
                .clone()
                .unwrap_or_else(|| dlq.name_any()),
        );
        resolved.context_headers_enable = errors
            .context_headers_enable
            .unwrap_or(dlq.spec.context_headers_enable);
    }
    if let Some(pipeline) = conn.spec.source.as_ref().and_then(|s| s.pipeline.as_ref()) {
        match serde_json::from_str::<serde_json::Value>(pipeline) {
            Ok(serde_json::Value::Array(_)) => {}
            Ok(_) => {
                return Err(Problem::new(
                    reason::CONFIG_INVALID,
                    "spec.source.pipeline must be a JSON array of stages",
                ));
            }
            Err(e) => {
                return Err(Problem::new(
                    reason::CONFIG_INVALID,
                    format!("spec.source.pipeline is not valid JSON: {e}"),
                ));
            }
        }
    }
    if let Some(r) = conn
        .spec
        .sink
        .as_ref()
        .and_then(|s| s.topics_regex.as_ref())
        && let Some(why) = crate::kafka::topics_regex_error(r)
    {
        return Err(Problem::new(
            reason::CONFIG_INVALID,
            format!("spec.sink.topicsRegex {r:?}: {why}"),
        ));
    }
    let servers = &conn.spec.kafka.bootstrap_servers;
    for lookup in &found.topics {
        let (topic, field) = (&lookup.topic, lookup.field);
        match &lookup.exists {
            Ok(true) => {}
            Ok(false) => {
                return Err(Problem::new(
                    reason::TOPIC_NOT_FOUND,
                    format!("topic {topic} ({field}) does not exist in Kafka {servers}"),
                ));
            }
            Err(e) => {
                return Err(Problem::new(
                    reason::KAFKA_UNAVAILABLE,
                    format!("cannot reach Kafka {servers} to check topic {topic}: {e}"),
                ));
            }
        }
    }
    Ok(Validated {
        resolved,
        kafka: Clients::new(&TaskKafka::from(&conn.spec.kafka), &creds),
    })
}

#[cfg(test)]
mod tests {
    use super::super::dereference::TopicLookup;
    use super::super::plan::tests::{SINK, SOURCE, connector};
    use super::*;
    use crate::controller::secrets::Secrets;
    use k8s_openapi::api::core::v1::Secret;

    fn secret(name: &str, keys: &[&str]) -> Secret {
        let data: std::collections::BTreeMap<String, String> = keys
            .iter()
            .map(|k| (k.to_string(), "x".to_string()))
            .collect();
        serde_json::from_value(
            serde_json::json!({ "metadata": { "name": name }, "stringData": data }),
        )
        .unwrap()
    }

    fn everything() -> Dereferenced {
        Dereferenced {
            secrets: Secrets::from_secrets(
                "shop",
                [
                    secret("mongo", &["uri"]),
                    secret("kafka-user", &["username", "password"]),
                ],
            ),
            dead_letter_queue: Some(
                serde_yaml::from_str(
                    "apiVersion: sluice.dev/v1alpha1\nkind: DeadLetterQueue\nmetadata: {name: orders-dlq}\n\
                     spec: {kafka: {bootstrapServers: 'k:9092'}, topicName: dlq.orders, contextHeadersEnable: true}",
                )
                .unwrap(),
            ),
            topics: vec![TopicLookup {
                topic: "orders".into(),
                field: "spec.sink.topics",
                exists: Ok(true),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_usable_spec_resolves_its_dead_letter_queue() {
        let v = validate(&connector(SINK), &everything()).unwrap();
        assert_eq!(
            v.resolved,
            Resolved {
                dead_letter_topic: Some("dlq.orders".into()),
                context_headers_enable: true,
            }
        );
        assert_eq!(v.kafka.producer.get("sasl.username"), Some("x"));
    }

    #[test]
    fn the_first_thing_missing_is_the_problem() {
        let conn = connector(SINK);
        let mut found = everything();
        found.topics[0].exists = Ok(false);
        let p = validate(&conn, &found).err().unwrap();
        assert_eq!(p.reason, reason::TOPIC_NOT_FOUND);
        assert_eq!(
            p.message,
            "topic orders (spec.sink.topics) does not exist in Kafka kafka:9092"
        );
        found.topics[0].exists = Err("timed out".into());
        assert_eq!(
            validate(&conn, &found).err().unwrap().reason,
            reason::KAFKA_UNAVAILABLE
        );
        found.dead_letter_queue = None;
        let p = validate(&conn, &found).err().unwrap();
        assert_eq!(
            (p.reason, p.message.as_str()),
            (
                reason::DEAD_LETTER_QUEUE_NOT_FOUND,
                "DeadLetterQueue shop/orders-dlq (spec.errors.deadLetterQueueRef) not found"
            )
        );
        found.secrets = Secrets::from_secrets("shop", [secret("mongo", &["uri"])]);
        assert_eq!(
            validate(&conn, &found).err().unwrap().reason,
            reason::SECRET_NOT_FOUND,
            "the Kafka user's Secret"
        );
        found.secrets = Secrets::from_secrets("shop", []);
        let p = validate(&conn, &found).err().unwrap();
        assert!(
            p.message.contains("spec.mongodb.connectionUriSecretRef"),
            "{}",
            p.message
        );
    }

    #[test]
    fn a_pipeline_must_be_a_json_array() {
        let mut conn = connector(SOURCE);
        conn.spec.source.as_mut().unwrap().pipeline = Some(r#"{"$match": {}}"#.into());
        let p = validate(&conn, &everything()).err().unwrap();
        assert_eq!(p.reason, reason::CONFIG_INVALID);
        conn.spec.source.as_mut().unwrap().pipeline = Some("[{".into());
        let p = validate(&conn, &everything()).err().unwrap();
        assert!(p.message.contains("not valid JSON"), "{}", p.message);
    }

    #[test]
    fn a_topics_regex_librdkafka_cannot_compile_names_the_field() {
        let mut conn = connector(SINK);
        let sink = conn.spec.sink.as_mut().unwrap();
        sink.topics = None;
        sink.topics_regex = Some("orders.(eu".into());
        let p = validate(&conn, &everything()).err().unwrap();
        assert_eq!(p.reason, reason::CONFIG_INVALID);
        assert!(
            p.message
                .starts_with("spec.sink.topicsRegex \"orders.(eu\""),
            "{}",
            p.message
        );
        conn.spec.sink.as_mut().unwrap().topics_regex = Some("orders.(eu|us)".into());
        assert!(validate(&conn, &everything()).is_ok());
    }
}
