//! Whether a Connector's spec can be used now (no I/O): its Secrets and keys exist, its DeadLetterQueue
//! exists, its pipeline is a JSON array, librdkafka compiles its topicsRegex, the topics it needs exist.
//! The first thing that is wrong is a [`Problem`]; otherwise what the spec resolves to.

use kube::ResourceExt;

use super::dereference::Dereferenced;
use crate::controller::dead_letter_queue::topic::topic_name;
use crate::controller::{Problem, reason};
use crate::crd::Connector;
use crate::crd::connector::DeadLetterRoute;
use crate::kafka::Clients;
use crate::wire::TaskKafka;
use crate::wire::task_config::TaskDeadLetterRoute;

/// What the spec points at, resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// The dead-letter routes, then the default destination as a route that takes every record.
    pub dead_letter_routes: Vec<TaskDeadLetterRoute>,
}

impl Resolved {
    /// Where dead letters go, for a status message (`12 sent to DLQ orders-dlq`): `DLQ <topic>` for one
    /// destination, `their dead-letter routes` for more.
    pub fn dead_letter_destination(&self) -> Option<String> {
        match self.dead_letter_routes.as_slice() {
            [] => None,
            [one] => Some(format!("DLQ {}", one.topic)),
            _ => Some("their dead-letter routes".into()),
        }
    }
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
    let resolved = Resolved {
        dead_letter_routes: dead_letter_routes(conn, found)?,
    };
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

/// `spec.errors.deadLetterRoutes`, then `deadLetterQueueRef` / `deadLetterQueueTopic` as the route taking
/// every record, each with its topic, context headers and partition resolved.
fn dead_letter_routes(
    conn: &Connector,
    found: &Dereferenced,
) -> Result<Vec<TaskDeadLetterRoute>, Problem> {
    let errors = &conn.spec.errors;
    let fallback = DeadLetterRoute {
        stages: Vec::new(),
        error_classes: Vec::new(),
        topics: Vec::new(),
        dead_letter_queue_ref: errors.dead_letter_queue_ref.clone(),
        dead_letter_queue_topic: errors.dead_letter_queue_topic.clone(),
        partition: None,
    };
    let mut routes = Vec::new();
    for (i, route) in errors
        .dead_letter_routes
        .iter()
        .enumerate()
        .map(|(i, r)| (Some(i), r))
        .chain(std::iter::once((None, &fallback)))
    {
        let field = match i {
            Some(i) => format!("spec.errors.deadLetterRoutes[{i}].deadLetterQueueRef"),
            None => "spec.errors.deadLetterQueueRef".to_string(),
        };
        let (topic, queue_headers) =
            match (&route.dead_letter_queue_ref, &route.dead_letter_queue_topic) {
                (Some(r), _) => {
                    let Some(dlq) = found.dead_letter_queues.get(&r.name) else {
                        return Err(Problem::new(
                            reason::DEAD_LETTER_QUEUE_NOT_FOUND,
                            format!(
                                "DeadLetterQueue {}/{} ({field}) not found",
                                conn.namespace().unwrap_or_default(),
                                r.name
                            ),
                        ));
                    };
                    (topic_name(dlq), Some(dlq.spec.context_headers_enable))
                }
                (None, Some(topic)) => (topic.clone(), None),
                (None, None) => continue,
            };
        routes.push(TaskDeadLetterRoute {
            stages: route.stages.clone(),
            error_classes: route.error_classes.clone(),
            topics: route.topics.clone(),
            topic,
            context_headers_enable: errors
                .context_headers_enable
                .or(queue_headers)
                .unwrap_or(false),
            partition: route
                .partition
                .unwrap_or(errors.dead_letter_queue_partition),
        });
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::super::dereference::TopicLookup;
    use super::super::plan::tests::{SINK, SOURCE, connector};
    use super::*;
    use crate::controller::secrets::Secrets;
    use crate::crd::DeadLetterQueue;
    use crate::crd::connector::{DeadLetterPartition, ErrorStage as Stage};
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
            dead_letter_queues: [(
                "orders-dlq".to_string(),
                serde_yaml::from_str(
                    "apiVersion: sluice.dev/v1alpha1\nkind: DeadLetterQueue\nmetadata: {name: orders-dlq}\n\
                     spec: {kafka: {bootstrapServers: 'k:9092'}, topicName: dlq.orders, contextHeadersEnable: true}",
                )
                .unwrap(),
            )]
            .into(),
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
            v.resolved.dead_letter_routes,
            [TaskDeadLetterRoute {
                stages: vec![],
                error_classes: vec![],
                topics: vec![],
                topic: "dlq.orders".into(),
                context_headers_enable: true,
                partition: DeadLetterPartition::Key,
            }]
        );
        assert_eq!(
            v.resolved.dead_letter_destination().as_deref(),
            Some("DLQ dlq.orders")
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
        found.dead_letter_queues.clear();
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
    fn routes_resolve_in_order_before_the_default_destination() {
        let mut conn = connector(SINK);
        conn.spec.errors = serde_yaml::from_str(
            "{tolerance: all, deadLetterQueueRef: {name: orders-dlq}, deadLetterQueuePartition: original,
              deadLetterRoutes: [
                {stages: [KEY_CONVERTER, VALUE_CONVERTER], deadLetterQueueTopic: '{topic}.DLT', partition: key},
                {errorClasses: ['11000'], deadLetterQueueRef: {name: writes}}]}",
        )
        .unwrap();
        let p = validate(&conn, &everything()).err().unwrap();
        assert_eq!(
            (p.reason, p.message.as_str()),
            (
                reason::DEAD_LETTER_QUEUE_NOT_FOUND,
                "DeadLetterQueue shop/writes (spec.errors.deadLetterRoutes[1].deadLetterQueueRef) not found"
            )
        );
        let mut found = everything();
        let writes: DeadLetterQueue = serde_yaml::from_str(
            "apiVersion: sluice.dev/v1alpha1\nkind: DeadLetterQueue\nmetadata: {name: writes}\n\
             spec: {kafka: {bootstrapServers: 'k:9092'}}",
        )
        .unwrap();
        found.dead_letter_queues.insert("writes".into(), writes);
        let routes = validate(&conn, &found).unwrap().resolved.dead_letter_routes;
        let summary: Vec<(&str, bool, DeadLetterPartition)> = routes
            .iter()
            .map(|r| (r.topic.as_str(), r.context_headers_enable, r.partition))
            .collect();
        assert_eq!(
            summary,
            [
                // A plain topic: headers off unless the spec turns them on.
                ("{topic}.DLT", false, DeadLetterPartition::Key),
                // A queue's topic defaults to its name, its headers to the queue's (on by default).
                ("writes", true, DeadLetterPartition::Original),
                ("dlq.orders", true, DeadLetterPartition::Original),
            ]
        );
        assert_eq!(
            routes[0].stages,
            [Stage::KeyConverter, Stage::ValueConverter]
        );
        assert_eq!(routes[1].error_classes, ["11000"]);
        assert!(routes[2].stages.is_empty() && routes[2].error_classes.is_empty());
        assert_eq!(
            Resolved {
                dead_letter_routes: routes
            }
            .dead_letter_destination()
            .as_deref(),
            Some("their dead-letter routes")
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
