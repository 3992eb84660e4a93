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
    // `sluice dlq peek` (also `kubectl sluice dlq peek`): the last records with their context, no record
    // contents unless asked; JSON for scripts; the replay filter's filters.
    let sluice = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .output()
            .expect("run sluice");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "sluice {}: {}{stdout}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let text = sluice(&["dlq", "peek", "orders-dlq", "-n", &ns, "--last", "2"]);
    let firsts: Vec<&str> = text.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(firsts.len(), 2, "{text}");
    assert!(
        firsts
            .iter()
            .all(|l| l.ends_with(&format!("{data_exception} at VALUE_CONVERTER"))),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "  from {topic} partition 0 offset 8, connector orders-sink task 0"
        )),
        "{text}"
    );
    assert!(
        !text.contains("poison") && !text.contains("value:"),
        "no record contents: {text}"
    );
    let json = sluice(&[
        "dlq",
        "peek",
        "orders-dlq",
        "-n",
        &ns,
        "--last",
        "5",
        "--include-records",
        "-o",
        "json",
    ]);
    let records: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(records.len(), 5, "{json}");
    let offsets: Vec<i64> = records
        .iter()
        .map(|r| r["originalOffset"].as_i64().unwrap())
        .collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {offsets:?}"
    );
    assert_eq!(records[0]["value"], "not json either", "{json}");
    assert_eq!(records[0]["key"], "k");
    // As a kubectl plugin: a link named kubectl-sluice on the PATH.
    let plugins = std::env::temp_dir().join(unique("kubectl-plugins"));
    std::fs::create_dir_all(&plugins).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_sluice"), plugins.join("kubectl-sluice"))
        .unwrap();
    let path = format!(
        "{}:{}",
        plugins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new(format!("{}/kubectl", env.bin_dir))
        .args([
            "sluice",
            "dlq",
            "peek",
            "orders-dlq",
            "-n",
            &ns,
            "--last",
            "1",
        ])
        .env("PATH", path)
        .output()
        .expect("run kubectl sluice");
    let _ = std::fs::remove_dir_all(&plugins);
    let via_kubectl = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        via_kubectl.lines().next(),
        firsts.last().copied(),
        "the newest record: {via_kubectl}"
    );
    let none = sluice(&[
        "dlq",
        "peek",
        "orders-dlq",
        "-n",
        &ns,
        "--original-topic",
        "payments",
    ]);
    assert_eq!(none.trim(), "no dead letters");

    // `restart` deletes the task pod and the operator starts it again; `reset-offsets` on a running
    // Connector waits (a Warning Event says so).
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
    let before = pods.get("orders-sink-task-0").await.unwrap().metadata.uid;
    let said = sluice(&["restart", "orders-sink", "-n", &ns]);
    assert!(said.starts_with("deleted orders-sink-task-0"), "{said}");
    let pods = &pods;
    wait_for("a new task pod", WAIT, || async {
        match pods
            .get_opt("orders-sink-task-0")
            .await
            .map_err(|e| e.to_string())?
        {
            Some(p) if p.metadata.uid != before => Ok(()),
            other => Err(format!("{:?}", other.map(|p| p.metadata.uid))),
        }
    })
    .await;
    let said = sluice(&["reset-offsets", "orders-sink", "-n", &ns]);
    assert!(said.contains("the reset waits"), "{said}");
    wait_for("an OffsetResetPending Event", WAIT, || async {
        let events = support::events_for(&client, &ns, "orders-sink").await;
        if events.iter().any(|(_, r, _)| r == "OffsetResetPending") {
            Ok(())
        } else {
            Err(format!("{events:?}"))
        }
    })
    .await;

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
