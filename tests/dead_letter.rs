//! DeadLetterQueue inspection on the loopback cluster: a sink Connector sends poison records to a
//! DeadLetterQueue, whose status shows depth, times, counts by error class, original topic and connector,
//! and the last errors — and stays right while new errors keep arriving.

mod support;

use std::time::Duration;

use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;
use sluice::crd::dead_letter_queue::Inspection;
use sluice::crd::{Connector, DeadLetterQueue};
use support::{
    Env, Operator, create_secret, create_topic, first_row, holds_for, install_crds, kubectl,
    namespace, produce_values, unique, wait_for,
};

const WAIT: Duration = Duration::from_secs(90);

async fn wait_inspection<F>(
    client: &Client,
    ns: &str,
    name: &str,
    operator: &Operator,
    what: &str,
    check: F,
) -> Inspection
where
    F: Fn(&Inspection) -> bool,
{
    let api: Api<DeadLetterQueue> = Api::namespaced(client.clone(), ns);
    let check = &check;
    wait_for(what, WAIT, || async {
        let d = api.get(name).await.map_err(|e| e.to_string())?;
        match d.status.and_then(|s| s.inspection) {
            Some(i) if check(&i) => Ok(i),
            other => Err(format!(
                "{other:#?}\noperator log:\n{}",
                operator.log_tail()
            )),
        }
    })
    .await
}

#[tokio::test]
async fn the_dead_letter_queue_shows_what_is_in_it_and_keeps_counting() {
    let Some(env) = Env::get() else { return };
    let client = env.kube().await;
    install_crds(&client).await;
    let ns = namespace(&client, &env, "dlq-inspect").await;
    let operator = Operator::start(&env, &ns, false, "sluice-test");
    let topic = unique("orders");
    create_topic(&env, &topic, 1).await;
    create_secret(&client, &ns, "mongo", &[("uri", env.mongodb_uri.as_str())]).await;

    let dlq_topic = unique("orders-dlq");
    let dlq: DeadLetterQueue = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "DeadLetterQueue", "metadata": { "name": "orders-dlq" },
        "spec": { "topicName": dlq_topic, "kafka": { "bootstrapServers": env.kafka_bootstrap }, "partitions": 2 }
    }))
    .unwrap();
    Api::<DeadLetterQueue>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &dlq)
        .await
        .unwrap();
    let conn: Connector = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Connector", "metadata": { "name": "orders-sink" },
        "spec": {
            "type": "mongodb-sink", "tasksMax": 1,
            "kafka": { "bootstrapServers": env.kafka_bootstrap },
            "mongodb": { "connectionUriSecretRef": { "name": "mongo", "key": "uri" }, "database": unique("dlq"), "collection": "orders" },
            "sink": { "topics": [topic] },
            "errors": { "tolerance": "all", "deadLetterQueueRef": { "name": "orders-dlq" } }
        }
    }))
    .unwrap();
    Api::<Connector>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &conn)
        .await
        .unwrap();

    produce_values(
        &env,
        &topic,
        &["{poison", r#"{"ok": 1}"#, "not json either", "{poison"],
    )
    .await;
    let first = wait_inspection(
        &client,
        &ns,
        "orders-dlq",
        &operator,
        "3 records inspected",
        |i| i.depth == 3 && i.records_scanned == 3,
    )
    .await;
    let data_exception = "org.apache.kafka.connect.errors.DataException";
    assert_eq!(
        first.by_error_class.get(data_exception),
        Some(3),
        "{first:#?}"
    );
    assert_eq!(first.by_original_topic.get(&topic), Some(3));
    assert_eq!(first.by_connector.get("orders-sink"), Some(3));
    // Counts are lists of {name, count}: kubectl describe shows the names as they are (it rewrites map keys,
    // `orders-sink` into `Orders - Sink`).
    let described = kubectl(
        &env,
        &["describe", "deadletterqueue", "orders-dlq", "-n", &ns],
    );
    assert!(
        described
            .lines()
            .any(|l| l.trim_start().starts_with("Name:") && l.ends_with(" orders-sink"))
            && !described.contains("Orders - Sink"),
        "{described}"
    );
    assert_eq!(first.partitions.iter().map(|p| p.depth).sum::<i64>(), 3);
    assert!(first.oldest_record_time.is_some() && first.newest_record_time.is_some());
    let last = first.last_errors.last().unwrap();
    assert_eq!(last.class, data_exception);
    assert_eq!(last.topic.as_deref(), Some(topic.as_str()));
    assert_eq!(
        last.offset,
        Some(3),
        "the original offset of the last poison record"
    );
    assert!(
        !last.message.contains("poison"),
        "no record contents: {last:?}"
    );

    let table = kubectl(&env, &["-n", &ns, "get", "dlq", "orders-dlq"]);
    let row = first_row(&table);
    assert_eq!(row["TOPIC"], dlq_topic, "{table}");
    assert_eq!(row["DEPTH"], "3", "{table}");
    assert_eq!(row["CONNECTORS"], r#"["orders-sink"]"#, "{table}");

    // New errors keep arriving: counted once each, never re-read.
    for round in 0..3 {
        produce_values(&env, &topic, &["{poison", r#"{"ok": 2}"#]).await;
        let want = 4 + round;
        let next = wait_inspection(
            &client,
            &ns,
            "orders-dlq",
            &operator,
            "new errors counted",
            |i| i.depth == want && i.records_scanned == want,
        )
        .await;
        assert_eq!(next.by_error_class.get(data_exception), Some(want));
        assert_eq!(next.by_original_topic.get(&topic), Some(want));
    }
    // Nothing new: the counts stay as they are over further refreshes (one a second).
    let api: Api<DeadLetterQueue> = Api::namespaced(client.clone(), &ns);
    holds_for("steady counts", Duration::from_secs(3), || async {
        let d = api.get("orders-dlq").await.map_err(|e| e.to_string())?;
        match d.status.and_then(|s| s.inspection) {
            Some(i) if (i.depth, i.records_scanned) == (6, 6) && i.last_errors.len() <= 5 => Ok(()),
            other => Err(format!("{other:#?}")),
        }
    })
    .await;
}
