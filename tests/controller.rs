//! The operator on the loopback cluster: Connectors become a ConfigMap and task pods run by the local node,
//! follow spec and state changes, are garbage-collected with their Connector and restarted after failures;
//! unusable specs show in conditions and Events; DeadLetterQueues become Kafka topics. Each test runs its
//! own operator process watching its own namespace.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use serde_json::json;
use sluice::crd::{Connector, DeadLetterQueue};
use support::{
    Env, Operator, condition, create_secret, create_topic, events_for, holds_for, install_crds,
    merge, namespace, produce_values, setup, unique, wait_for,
};

const WAIT: Duration = Duration::from_secs(60);

fn sink(name: &str, env: &Env, topic: &str, extra: serde_json::Value) -> Connector {
    let mut spec = json!({
        "type": "mongodb-sink",
        "tasksMax": 2,
        "kafka": { "bootstrapServers": env.kafka_bootstrap },
        "mongodb": { "connectionUriSecretRef": { "name": "mongo", "key": "uri" }, "database": "shop", "collection": "orders" },
        "sink": { "topics": [topic] },
        // Failed tasks stay failed unless a test asks for quick restarts.
        "restart": { "backoffInitialSeconds": 3600, "backoffMaxSeconds": 3600 }
    });
    merge(&mut spec, extra);
    serde_json::from_value(
        json!({ "apiVersion": "sluice.dev/v1alpha1", "kind": "Connector",
                                   "metadata": { "name": name }, "spec": spec }),
    )
    .unwrap()
}

async fn task_pods(client: &Client, ns: &str, connector: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut list = pods
        .list(&ListParams::default().labels(&format!("sluice.dev/connector={connector}")))
        .await
        .unwrap()
        .items;
    list.sort_by_key(|p| p.name_any());
    list
}

#[tokio::test]
async fn a_connector_runs_task_pods_that_follow_its_spec_and_state() {
    let Some(s) = setup("ctl-tasks").await else {
        return;
    };
    let topic = unique("orders");
    create_topic(&s.env, &topic, 2).await;
    create_secret(&s.client, &s.ns, "mongo", &[("uri", &s.env.mongodb_uri)]).await;
    let connectors: Api<Connector> = Api::namespaced(s.client.clone(), &s.ns);
    connectors
        .create(
            &PostParams::default(),
            &sink("orders", &s.env, &topic, json!({})),
        )
        .await
        .unwrap();

    // A ConfigMap with one config per task, and two pods that the scheduler binds and the local node runs.
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns);
    let cm = wait_for("the tasks ConfigMap", WAIT, || async {
        cms.get_opt("orders-tasks")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("not yet".to_string())
    })
    .await;
    let keys: Vec<String> = cm.data.unwrap().into_keys().collect();
    assert_eq!(keys, ["task-0.yaml", "task-1.yaml"]);
    let first = wait_for("two task pods run by the local node", WAIT, || async {
        let pods = task_pods(&s.client, &s.ns, "orders").await;
        let ran = pods.iter().filter(|p| {
            let st = p.status.clone().unwrap_or_default();
            st.pod_ip.is_some() && st.container_statuses.is_some_and(|c| !c.is_empty())
        });
        if pods.len() == 2 && ran.count() == 2 {
            Ok(pods)
        } else {
            Err(format!(
                "{} pods: {:?}",
                pods.len(),
                pods.iter()
                    .map(|p| (p.name_any(), p.status.clone().and_then(|s| s.phase)))
                    .collect::<Vec<_>>()
            ))
        }
    })
    .await;
    assert_eq!(
        first.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
        ["orders-task-0", "orders-task-1"]
    );
    assert!(
        first
            .iter()
            .all(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some("sluice-local"))
    );
    // The sink tasks run: their readiness probes pass and the Connector is Ready.
    let ready = s
        .wait_condition("orders", "Ready", "True", "TasksReady")
        .await;
    let status = ready.status.unwrap();
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.task_summary.as_deref(), Some("2/2"));

    // A spec change replaces the pods (new UIDs, new config hash).
    let hash = |p: &Pod| p.annotations()["sluice.dev/config-hash"].clone();
    let old: BTreeMap<String, (String, String)> = first
        .iter()
        .map(|p| (p.name_any(), (p.uid().unwrap(), hash(p))))
        .collect();
    connectors
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "errors": { "logEnable": true } } })),
        )
        .await
        .unwrap();
    wait_for("both pods replaced", WAIT, || async {
        let pods = task_pods(&s.client, &s.ns, "orders").await;
        let replaced = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                old.get(&p.name_any())
                    .is_some_and(|(uid, h)| Some(uid) != p.uid().as_ref() && *h != hash(p))
            })
            .count();
        if replaced == 2 {
            Ok(())
        } else {
            Err(format!("{replaced}/2 replaced"))
        }
    })
    .await;

    // paused removes the tasks; running brings them back.
    connectors
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "state": "paused" } })),
        )
        .await
        .unwrap();
    wait_for("no task pods while paused", WAIT, || async {
        let n = task_pods(&s.client, &s.ns, "orders").await.len();
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} pods"))
        }
    })
    .await;
    let paused = s.wait_condition("orders", "Ready", "True", "Paused").await;
    assert_eq!(paused.status.unwrap().task_summary.as_deref(), Some("0/0"));
    connectors
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "state": "running" } })),
        )
        .await
        .unwrap();
    wait_for("task pods back after resuming", WAIT, || async {
        let n = task_pods(&s.client, &s.ns, "orders").await.len();
        if n == 2 {
            Ok(())
        } else {
            Err(format!("{n} pods"))
        }
    })
    .await;

    // Deleting the Connector removes its pods and ConfigMap through the garbage collector.
    connectors
        .delete("orders", &DeleteParams::background())
        .await
        .unwrap();
    wait_for("pods and ConfigMap garbage-collected", WAIT, || async {
        let pods = task_pods(&s.client, &s.ns, "orders").await.len();
        let cm = cms
            .get_opt("orders-tasks")
            .await
            .map_err(|e| e.to_string())?;
        if pods == 0 && cm.is_none() {
            Ok(())
        } else {
            Err(format!("{pods} pods, ConfigMap {}", cm.is_some()))
        }
    })
    .await;
    let reasons: Vec<String> = events_for(&s.client, &s.ns, "orders")
        .await
        .into_iter()
        .map(|e| e.1)
        .collect();
    for expected in ["TasksCreated", "TaskReplaced", "TaskRemoved"] {
        assert!(
            reasons.iter().any(|r| r == expected),
            "event {expected} missing from {reasons:?}"
        );
    }
}

#[tokio::test]
async fn a_failed_task_is_restarted_after_its_backoff_until_max_restarts() {
    let Some(s) = setup("ctl-restart").await else {
        return;
    };
    let topic = unique("orders");
    create_topic(&s.env, &topic, 1).await;
    // A connection string the driver rejects: the task fails at start, every time.
    create_secret(&s.client, &s.ns, "mongo", &[("uri", "not-a-mongodb-uri")]).await;
    let connectors: Api<Connector> = Api::namespaced(s.client.clone(), &s.ns);
    let spec = json!({ "tasksMax": 1, "restart": { "backoffInitialSeconds": 1, "backoffMaxSeconds": 2, "maxRestarts": 2 } });
    connectors
        .create(&PostParams::default(), &sink("flaky", &s.env, &topic, spec))
        .await
        .unwrap();

    let degraded = s
        .wait_condition("flaky", "Degraded", "True", "MaxRestartsReached")
        .await;
    let status = degraded.status.unwrap();
    assert_eq!(status.tasks[0].restarts, 2, "{:?}", status.tasks);
    assert_eq!(status.tasks[0].phase.as_deref(), Some("Failed"));
    let message = condition(&connectors.get("flaky").await.unwrap(), "Degraded").2;
    assert!(message.contains("maxRestarts=2"), "{message}");
    let events = events_for(&s.client, &s.ns, "flaky").await;
    assert!(
        events
            .iter()
            .any(|e| e.1 == "TaskRestarted" && e.2.starts_with("task 0 failed: restarted")),
        "{events:?}"
    );
    assert!(events.iter().any(|e| e.1 == "TaskFailed"), "{events:?}");
    // Repeats of an Event are one Event with a count (as client-go's recorder does).
    let all: Api<Event> = Api::namespaced(s.client.clone(), &s.ns);
    let restarted = all
        .list(&ListParams::default().fields("involvedObject.name=flaky,reason=TaskRestarted"))
        .await
        .unwrap()
        .items;
    assert_eq!(restarted.len(), 1, "{restarted:?}");
    let e = &restarted[0];
    assert_eq!(e.count, Some(2), "two restarts: {e:?}");
    // What kubectl get events shows and sorts by (--sort-by=.lastTimestamp) moves with the count.
    let (first, last) = (e.first_timestamp.clone(), e.last_timestamp.clone());
    assert!(
        first.is_some() && last.is_some() && first.unwrap().0 < last.unwrap().0,
        "{e:?}"
    );
    let component = e.source.as_ref().and_then(|s| s.component.clone());
    assert!(
        component.is_some() && component == e.reporting_component,
        "{e:?}"
    );
}

#[tokio::test]
async fn a_missing_secret_is_reported_until_it_appears() {
    let Some(s) = setup("ctl-secret").await else {
        return;
    };
    let topic = unique("orders");
    create_topic(&s.env, &topic, 1).await;
    let connectors: Api<Connector> = Api::namespaced(s.client.clone(), &s.ns);
    connectors
        .create(
            &PostParams::default(),
            &sink("orders", &s.env, &topic, json!({ "state": "paused" })),
        )
        .await
        .unwrap();
    let blocked = s
        .wait_condition("orders", "Ready", "False", "SecretNotFound")
        .await;
    let (_, _, message) = condition(&blocked, "Ready");
    assert!(
        message.contains("spec.mongodb.connectionUriSecretRef"),
        "{message}"
    );
    assert!(
        task_pods(&s.client, &s.ns, "orders").await.is_empty(),
        "no partial tasks"
    );
    let events = events_for(&s.client, &s.ns, "orders").await;
    assert!(
        events
            .iter()
            .any(|e| e.1 == "SecretNotFound" && e.2.contains("mongo")),
        "{events:?}"
    );

    create_secret(&s.client, &s.ns, "mongo", &[("uri", &s.env.mongodb_uri)]).await;
    s.wait_condition("orders", "Ready", "True", "Paused").await;
}

#[tokio::test]
async fn a_mongodb_that_refuses_authentication_makes_the_connector_not_ready_and_skips_nothing() {
    let Some(s) = setup("ctl-auth").await else {
        return;
    };
    let topic = unique("orders");
    create_topic(&s.env, &topic, 1).await;
    produce_values(
        &s.env,
        &topic,
        &[r#"{"n": 0}"#, r#"{"n": 1}"#, r#"{"n": 2}"#],
    )
    .await;
    // Credentials the fault peer refuses at every handshake (no other test authenticates).
    s.env
        .fault_peer_rule(json!({ "command": "saslStart", "times": 100000,
            "reply": { "ok": 0, "code": 18, "codeName": "AuthenticationFailed", "errmsg": "Authentication failed." } }))
        .await;
    let uri = s
        .env
        .fault_peer_uri
        .replacen("mongodb://", "mongodb://sluice:wrong@", 1);
    create_secret(&s.client, &s.ns, "mongo", &[("uri", &uri)]).await;
    let connectors: Api<Connector> = Api::namespaced(s.client.clone(), &s.ns);
    connectors
        .create(
            &PostParams::default(),
            &sink(
                "auth",
                &s.env,
                &topic,
                json!({ "tasksMax": 1, "errors": { "tolerance": "all" } }),
            ),
        )
        .await
        .unwrap();
    // Every write fails, yet nothing is a record error: Ready=False and Degraded for the outage.
    let refused = s
        .wait_condition("auth", "Ready", "False", "MongoDBUnavailable")
        .await;
    let (_, _, message) = condition(&refused, "Ready");
    assert!(message.contains("Authentication failed"), "{message}");
    assert_eq!(condition(&refused, "Degraded").1, "MongoDBUnavailable");
    assert!(
        !message.contains("wrong"),
        "no credential in status: {message}"
    );
    holds_for(
        "no record error counted",
        Duration::from_secs(3),
        || async {
            let c = connectors.get("auth").await.map_err(|e| e.to_string())?;
            let totals = c.status.and_then(|st| st.totals).unwrap_or_default();
            if totals.total_record_errors == 0 && totals.total_records_skipped == 0 {
                Ok(())
            } else {
                Err(format!("{totals:?}"))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn unknown_topics_and_dead_letter_queues_block_the_connector() {
    let Some(s) = setup("ctl-refs").await else {
        return;
    };
    create_secret(&s.client, &s.ns, "mongo", &[("uri", &s.env.mongodb_uri)]).await;
    let connectors: Api<Connector> = Api::namespaced(s.client.clone(), &s.ns);
    let topic = unique("late");
    connectors
        .create(
            &PostParams::default(),
            &sink("late", &s.env, &topic, json!({ "state": "paused" })),
        )
        .await
        .unwrap();
    let blocked = s
        .wait_condition("late", "Ready", "False", "TopicNotFound")
        .await;
    assert!(condition(&blocked, "Ready").2.contains("spec.sink.topics"));
    create_topic(&s.env, &topic, 1).await;
    s.wait_condition("late", "Ready", "True", "Paused").await;

    connectors
        .patch(
            "late",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "errors": {
            "tolerance": "all", "deadLetterQueueRef": { "name": "missing-dlq" } } } })),
        )
        .await
        .unwrap();
    let blocked = s
        .wait_condition("late", "Ready", "False", "DeadLetterQueueNotFound")
        .await;
    assert!(condition(&blocked, "Ready").2.contains("missing-dlq"));

    // A topicsRegex librdkafka can't compile: Ready=False naming the field, and no task starts.
    let mut bad_regex = sink("bad-regex", &s.env, &topic, json!({}));
    let spec = bad_regex.spec.sink.as_mut().unwrap();
    spec.topics = None;
    spec.topics_regex = Some("orders.(eu".into());
    connectors
        .create(&PostParams::default(), &bad_regex)
        .await
        .unwrap();
    let blocked = s
        .wait_condition("bad-regex", "Ready", "False", "ConfigInvalid")
        .await;
    let message = condition(&blocked, "Ready").2;
    assert!(message.contains("spec.sink.topicsRegex"), "{message}");
    assert!(task_pods(&s.client, &s.ns, "bad-regex").await.is_empty());
}

async fn kafka_topic(env: &Env, topic: &str) -> Option<(usize, BTreeMap<String, String>)> {
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .create()
        .unwrap();
    let md = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let t = md.topics().first()?;
    if t.error().is_some() {
        return None;
    }
    let partitions = t.partitions().len();
    let configs = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .ok()?;
    let entries = configs.into_iter().next()?.ok()?.entries;
    Some((
        partitions,
        entries
            .into_iter()
            .filter(|e| !e.is_default)
            .filter_map(|e| Some((e.name, e.value?)))
            .collect(),
    ))
}

/// A DeadLetterQueue's Ready condition as (status, reason, message).
fn dlq_ready(d: &DeadLetterQueue) -> Option<(String, String, String)> {
    d.status
        .as_ref()
        .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test]
async fn a_dead_letter_queue_creates_and_grows_its_topic() {
    let Some(s) = setup("ctl-dlq").await else {
        return;
    };
    let topic = unique("orders-dlq");
    let dlqs: Api<DeadLetterQueue> = Api::namespaced(s.client.clone(), &s.ns);
    let dlq: DeadLetterQueue = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "DeadLetterQueue",
        "metadata": { "name": "orders-dlq" },
        "spec": { "topicName": topic, "kafka": { "bootstrapServers": s.env.kafka_bootstrap }, "partitions": 3,
                  "retentionMs": 604800000, "config": { "max.message.bytes": "2097152" } }
    }))
    .unwrap();
    dlqs.create(&PostParams::default(), &dlq).await.unwrap();

    wait_for("the DLQ Ready with its topic", WAIT, || async {
        let d = dlqs.get("orders-dlq").await.map_err(|e| e.to_string())?;
        match dlq_ready(&d) {
            Some((st, _, _)) if st == "True" => Ok(d),
            other => Err(format!("{other:?}; {}", s.operator.log_tail())),
        }
    })
    .await;
    let (partitions, configs) = kafka_topic(&s.env, &topic)
        .await
        .expect("topic exists in Kafka");
    assert_eq!(partitions, 3);
    assert_eq!(
        configs.get("retention.ms").map(String::as_str),
        Some("604800000")
    );
    assert_eq!(
        configs.get("max.message.bytes").map(String::as_str),
        Some("2097152")
    );

    // Partitions grow; the status reports what the broker has; referencing Connectors are listed.
    dlqs.patch(
        "orders-dlq",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "partitions": 5 } })),
    )
    .await
    .unwrap();
    create_secret(&s.client, &s.ns, "mongo", &[("uri", &s.env.mongodb_uri)]).await;
    let data_topic = unique("orders");
    create_topic(&s.env, &data_topic, 1).await;
    let conn = sink(
        "orders",
        &s.env,
        &data_topic,
        json!({ "state": "paused", "errors": { "tolerance": "all", "deadLetterQueueRef": { "name": "orders-dlq" } } }),
    );
    Api::<Connector>::namespaced(s.client.clone(), &s.ns)
        .create(&PostParams::default(), &conn)
        .await
        .unwrap();
    wait_for(
        "5 partitions and the referencing connector in status",
        WAIT,
        || async {
            let st = dlqs
                .get("orders-dlq")
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            let parts = st.topic.as_ref().map(|t| t.partitions);
            if parts == Some(5) && st.connectors == ["orders"] {
                Ok(())
            } else {
                Err(format!(
                    "partitions {parts:?}, connectors {:?}",
                    st.connectors
                ))
            }
        },
    )
    .await;
    assert_eq!(kafka_topic(&s.env, &topic).await.unwrap().0, 5);
    // The connector's rendered task config points at the queue's topic with context headers on.
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns);
    s.wait_condition("orders", "Ready", "True", "Paused").await;
    let cm = cms.get_opt("orders-tasks").await.unwrap();
    assert!(cm.is_some(), "the ConfigMap exists even while paused");

    // A topic config the broker rejects: Ready=False naming the key (the broker's reply does not).
    let bad: DeadLetterQueue = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "DeadLetterQueue",
        "metadata": { "name": "bad-config" },
        "spec": { "topicName": unique("bad-config"), "kafka": { "bootstrapServers": s.env.kafka_bootstrap },
                  "config": { "retention.bytes": "lots", "max.message.bytes": "2097152" } }
    }))
    .unwrap();
    dlqs.create(&PostParams::default(), &bad).await.unwrap();
    wait_for("the DLQ to name its rejected config", WAIT, || async {
        let d = dlqs.get("bad-config").await.map_err(|e| e.to_string())?;
        match dlq_ready(&d) {
            Some((st, reason, message))
                if st == "False"
                    && reason == "TopicCreateFailed"
                    && message.ends_with("(rejected: `retention.bytes=lots`)") =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn two_operator_replicas_are_ready_one_leads_and_a_stop_hands_the_lease_over() {
    let Some(env) = Env::get() else { return };
    let client = env.kube().await;
    install_crds(&client).await;
    let ns = namespace(&client, &env, "ctl-leader").await;
    let lease: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &ns);
    let holder = || async {
        lease
            .get_opt("sluice-operator")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
    };
    let mut a = Operator::start(&env, &ns, true, "replica-a");
    wait_for("replica-a to lead", WAIT, || async {
        if a.leads().await {
            Ok(())
        } else {
            Err(a.log_tail())
        }
    })
    .await;
    let b = Operator::start(&env, &ns, true, "replica-b");
    // A standby replica is Ready too (a rolling update waits for that), and does not lead.
    wait_for("replica-b to be ready", WAIT, || async {
        match b.readyz().await {
            200 => Ok(()),
            code => Err(format!("readyz {code}: {}", b.log_tail())),
        }
    })
    .await;
    holds_for("one leader", Duration::from_secs(3), || async {
        match (a.leads().await, b.leads().await, a.readyz().await) {
            (true, false, 200) => Ok(()),
            seen => Err(format!("{seen:?}")),
        }
    })
    .await;
    assert_eq!(holder().await.as_deref(), Some("replica-a"));

    // SIGTERM (a rolling update): the leader stops cleanly and releases the Lease, so the other replica
    // leads at its next attempt (2 s), not after the lease duration (15 s).
    let stopped = std::time::Instant::now();
    assert_eq!(a.terminate(), Some(0), "{}", a.log_tail());
    wait_for("replica-b to take over", Duration::from_secs(8), || async {
        match (b.leads().await, holder().await) {
            (true, Some(h)) if h == "replica-b" => Ok(()),
            seen => Err(format!("{seen:?}: {}", b.log_tail())),
        }
    })
    .await;
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "took {:?}",
        stopped.elapsed()
    );

    // A leader that dies without stopping (SIGKILL) is replaced once its lease expires.
    let c = Operator::start(&env, &ns, true, "replica-c");
    let mut b = b;
    b.kill();
    wait_for(
        "replica-c to take over",
        Duration::from_secs(45),
        || async {
            match (c.leads().await, holder().await) {
                (true, Some(h)) if h == "replica-c" => Ok(()),
                seen => Err(format!("{seen:?}: {}", c.log_tail())),
            }
        },
    )
    .await;
}
