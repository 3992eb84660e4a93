//! What users get nowhere else, on the loopback cluster: per-task error counters in the Connector's status,
//! and automatic recovery when MongoDB no longer has a source's resume point (the fault peer answers the
//! resume with error 286 ChangeStreamHistoryLost, as a replica set does). Each test runs its own operator,
//! which reads task reports every second and calls record errors recent for 20 s.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use mongodb::bson::{Document, doc};
use rdkafka::ClientConfig;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use sluice::crd::Connector;
use support::{
    Env, Operator, Setup, condition, create_secret, create_topic, events_for, first_row, has,
    holds_for, kubectl, setup, topic_reader, unique, wait_for,
};

const WAIT: Duration = Duration::from_secs(90);

/// A source Connector on the fault peer, streaming `<db>.orders` to `cdc.<db>.orders`.
async fn create_source(s: &Setup, name: &str, db: &str, extra: serde_json::Value) {
    create_secret(
        &s.client,
        &s.ns,
        "mongo",
        &[("uri", s.env.fault_peer_uri.as_str())],
    )
    .await;
    let spec = json!({
        "type": "mongodb-source",
        "kafka": { "bootstrapServers": s.env.kafka_bootstrap },
        "mongodb": { "connectionUriSecretRef": { "name": "mongo", "key": "uri" }, "database": db, "collection": "orders" },
        "source": { "topicPrefix": "cdc", "heartbeat": { "intervalMs": 0 } },
        // A plain failure would wait an hour: only the recovery restarts the task quickly.
        "restart": { "backoffInitialSeconds": 3600, "backoffMaxSeconds": 3600 }
    });
    s.create_connector(name, spec, extra).await;
}

async fn orders(env: &Env, db: &str) -> mongodb::Collection<Document> {
    mongodb::Client::with_uri_str(&env.mongodb_uri)
        .await
        .unwrap()
        .database(db)
        .collection("orders")
}

/// Records of a topic from its start as (CreateTime ms, value), once `n` arrived.
async fn read_records(env: &Env, topic: &str, n: usize) -> Vec<(i64, String)> {
    let consumer = topic_reader(env, topic);
    let mut out = Vec::new();
    let deadline = Instant::now() + WAIT;
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(m)) => out.push((
                m.timestamp().to_millis().unwrap_or(0),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            )),
            Ok(Err(e)) if left > Duration::ZERO => {
                // The topic may not exist yet; the source creates it with its first record.
                eprintln!("waiting for {topic}: {e}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            _ => panic!("only {} of {n} records on {topic}: {out:?}", out.len()),
        }
    }
    out
}

/// CreateTime of the first record of `topic` at or after `since_ms` whose value contains `needle`.
async fn first_record_since(env: &Env, topic: &str, since_ms: i64, needle: &str) -> i64 {
    let consumer = topic_reader(env, topic);
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(m)) => {
                let ts = m.timestamp().to_millis().unwrap_or(0);
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                if ts >= since_ms && value.contains(needle) {
                    return ts;
                }
            }
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) => panic!("no record on {topic} since {since_ms} containing {needle:?}"),
        }
    }
}

/// Makes the next resume of the change stream on `db` fail with 286: the live getMore is answered with
/// CursorNotFound (always resumable; a dropped connection would also clear the driver's pool and race its
/// retry), and the resume the driver then attempts is answered with ChangeStreamHistoryLost.
async fn lose_resume_point(env: &Env, db: &str) {
    env.fault_peer_rule(json!({
        "command": "aggregate", "changeStream": true, "database": db, "times": 1,
        "reply": { "ok": 0, "code": 286, "codeName": "ChangeStreamHistoryLost",
                   "errmsg": "Resume of change stream was not possible, as the resume point may no longer be in the oplog." }
    }))
    .await;
    env.fault_peer_rule(json!({
        "command": "getMore", "database": db, "collection": "orders", "times": 1,
        "reply": { "ok": 0, "code": 43, "codeName": "CursorNotFound", "errmsg": "cursor id 1 not found" }
    }))
    .await;
}

/// Waits for the task pod `pod` to end; returns when the test saw it Failed.
async fn wait_pod_failed(s: &Setup, pod: &str) -> Instant {
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    wait_for(&format!("pod {pod} to fail"), WAIT, || async {
        match pods.get_opt(pod).await.map_err(|e| e.to_string())? {
            Some(p) if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed") => {
                Ok(Instant::now())
            }
            Some(p) => Err(format!(
                "phase {:?}; fault peer rules: {}",
                p.status.and_then(|s| s.phase),
                s.env.fault_peer_rules().await
            )),
            None => Ok(Instant::now()),
        }
    })
    .await
}

fn partition(conn: &Connector) -> String {
    conn.status
        .as_ref()
        .and_then(|s| s.offsets.as_ref()?.partition_name.clone())
        .unwrap_or_default()
}

fn rotations(conn: &Connector) -> usize {
    conn.status
        .as_ref()
        .and_then(|s| s.offsets.as_ref())
        .map_or(0, |o| o.rotations.len())
}

fn running(conn: &Connector) -> bool {
    has(conn, "Ready", "True", "TasksReady")
        && conn.status.as_ref().is_some_and(|s| {
            s.tasks
                .iter()
                .all(|t| t.phase.as_deref() == Some("Running"))
        })
}

#[tokio::test]
async fn a_lost_resume_token_rotates_the_partition_and_a_new_task_streams_without_anyone() {
    let Some(s) = setup("rec-rotate").await else {
        return;
    };
    let db = unique("rot");
    let name = unique("events");
    let topic = format!("cdc.{db}.orders");
    create_source(&s, &name, &db, json!({})).await;
    let ready = s
        .wait_connector(&name, "Ready with its task running", running)
        .await;
    assert_eq!(partition(&ready), name, "the base name first");
    let coll = orders(&s.env, &db).await;
    coll.insert_one(doc! { "n": 0 }).await.unwrap();
    read_records(&s.env, &topic, 1).await;
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let old_uid = pods.get(&format!("{name}-task-0")).await.unwrap().uid();
    // Keep writing through the loss: the first event the new task produces tells how long the pipeline
    // had no task. (Recovery is fast enough that the failed pod may be replaced between two polls.)
    let writer = {
        let coll = coll.clone();
        tokio::spawn(async move {
            for n in 1.. {
                let _ = coll.insert_one(doc! { "n": n, "after": true }).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let lost_ms = k8s_openapi::jiff::Timestamp::now().as_millisecond();
    lose_resume_point(&s.env, &db).await;

    let recovered = s
        .wait_connector(&name, "rotated and running again", |c| {
            partition(c) == format!("{name}.1")
                && running(c)
                && has(c, "ResumeTokenRecovered", "True", "OffsetPartitionRotated")
        })
        .await;
    let new_uid = pods.get(&format!("{name}-task-0")).await.unwrap().uid();
    assert_ne!(old_uid, new_uid, "a new task pod");
    let rotated_ms = recovered
        .status
        .as_ref()
        .unwrap()
        .offsets
        .as_ref()
        .unwrap()
        .rotations[0]
        .time
        .parse::<k8s_openapi::jiff::Timestamp>()
        .unwrap()
        .as_millisecond();
    // The old task ended before the rotation; every later record comes from the new task.
    let first_new = first_record_since(&s.env, &topic, rotated_ms, "after").await;
    writer.abort();
    println!(
        "resume token lost -> first record from the rotated task: {} ms after the loss was scripted \
         (an upper bound of task exit -> first record), {} ms after the rotation",
        first_new - lost_ms,
        first_new - rotated_ms
    );

    let status = recovered.status.clone().unwrap();
    let offsets = status.offsets.unwrap();
    assert_eq!(offsets.rotations.len(), 1, "{offsets:?}");
    let r = &offsets.rotations[0];
    assert_eq!(
        (r.from.as_str(), r.to.as_str()),
        (name.as_str(), format!("{name}.1").as_str())
    );
    assert_eq!(r.code, Some(286));
    assert_eq!(r.code_name.as_deref(), Some("ChangeStreamHistoryLost"));
    assert_eq!(r.reason, "ResumeTokenLost");
    assert!(
        r.message.as_deref().unwrap_or_default().contains("oplog"),
        "{r:?}"
    );
    assert_eq!(
        status.tasks[0].restarts, 0,
        "a rotation is not a crash restart"
    );
    let (_, _, message) = condition(&recovered, "ResumeTokenRecovered");
    assert!(
        message.contains(&format!("{name} to {name}.1")),
        "{message}"
    );
    let events = events_for(&s.client, &s.ns, &name).await;
    assert!(
        events.iter().any(|(t, r, m)| t == "Warning"
            && r == "ResumeTokenLost"
            && m.contains("ChangeStreamHistoryLost (286)")),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|(t, r, m)| t == "Normal" && r == "OffsetPartitionRotated" && m.contains(".1")),
        "{events:?}"
    );
    // The new task stores its offsets under the new name.
    let task_cfg = kubectl(
        &s.env,
        &[
            "-n",
            &s.ns,
            "get",
            "configmap",
            &format!("{name}-tasks"),
            "-o",
            "jsonpath={.data.task-0\\.yaml}",
        ],
    );
    assert!(
        task_cfg.contains(&format!("offsetPartitionName: {name}.1")),
        "{task_cfg}"
    );
}

#[tokio::test]
async fn an_operator_killed_during_a_recovery_still_rotates_exactly_once() {
    let Some(mut s) = setup("rec-kill").await else {
        return;
    };
    let db = unique("kill");
    let name = unique("events");
    create_source(&s, &name, &db, json!({})).await;
    s.wait_connector(&name, "running", running).await;

    // The task loses its resume point while no operator runs.
    s.operator.kill();
    lose_resume_point(&s.env, &db).await;
    wait_pod_failed(&s, &format!("{name}-task-0")).await;

    // An operator that dies the moment it has recorded the rotation (before or while replacing the pod)…
    s.operator = Operator::start(&s.env, &s.ns, false, "sluice-test-2");
    s.wait_connector(&name, "a rotation recorded", |c| rotations(c) >= 1)
        .await;
    s.operator.kill();
    // …and one that takes over: the failed pod it may still see was already rotated for.
    s.operator = Operator::start(&s.env, &s.ns, false, "sluice-test-3");
    let recovered = s
        .wait_connector(&name, "running under the rotated name", |c| {
            running(c) && partition(c) == format!("{name}.1")
        })
        .await;
    // Over the third operator's next reconciles, it does not rotate again.
    let api = s.connectors();
    holds_for("one rotation", Duration::from_secs(3), || async {
        let after = api.get(&name).await.map_err(|e| e.to_string())?;
        if rotations(&after) == 1 && partition(&after) == partition(&recovered) {
            Ok(())
        } else {
            Err(format!("{:?}", after.status))
        }
    })
    .await;
}

#[tokio::test]
async fn policy_fail_explains_what_to_do_and_the_rotate_annotation_recovers() {
    let Some(s) = setup("rec-fail").await else {
        return;
    };
    let db = unique("fail");
    let name = unique("events");
    let recovery = json!({ "source": { "resumeTokenRecovery": { "policy": "fail" } } });
    create_source(&s, &name, &db, recovery).await;
    s.wait_connector(&name, "running", running).await;
    lose_resume_point(&s.env, &db).await;

    let degraded = s
        .wait_connector(&name, "Degraded ResumeTokenLost", |c| {
            has(c, "Degraded", "True", "ResumeTokenLost")
        })
        .await;
    let (_, _, message) = condition(&degraded, "Degraded");
    assert!(
        message.contains("policy is fail")
            && message.contains(&format!(
                "kubectl annotate connector {name} sluice.dev/rotate-offsets="
            )),
        "{message}"
    );
    assert_eq!(rotations(&degraded), 0);
    assert_eq!(partition(&degraded), name);
    assert!(has(&degraded, "Ready", "False", "TasksNotReady"));
    let api = s.connectors();
    holds_for(
        "no restart that fails the same way",
        Duration::from_secs(3),
        || async {
            let still = api.get(&name).await.map_err(|e| e.to_string())?;
            match still.status.as_ref().map(|st| st.tasks[0].restarts) {
                Some(0) => Ok(()),
                other => Err(format!("restarts {other:?}")),
            }
        },
    )
    .await;

    let patch = json!({ "metadata": { "annotations": { "sluice.dev/rotate-offsets": "first" } } });
    s.connectors()
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let recovered = s
        .wait_connector(&name, "rotated on request and running", |c| {
            running(c)
                && partition(c) == format!("{name}.1")
                && has(c, "Degraded", "False", "AsExpected")
        })
        .await;
    let offsets = recovered.status.unwrap().offsets.unwrap();
    assert_eq!(offsets.rotations.len(), 1);
    assert_eq!(offsets.rotations[0].reason, "Requested");
    assert_eq!(offsets.last_rotate_request.as_deref(), Some("first"));
    let events = events_for(&s.client, &s.ns, &name).await;
    assert!(
        events
            .iter()
            .any(|(_, r, m)| r == "OffsetPartitionRotated" && m.contains("on request")),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_source_resets_its_offsets_only_while_stopped() {
    let Some(s) = setup("rec-reset").await else {
        return;
    };
    let db = unique("reset");
    let name = unique("events");
    let topic = format!("cdc.{db}.orders");
    // copyExisting on a fresh start: after a reset the collection is copied again. The document is there
    // before the task starts (one inserted while it starts may be copied and streamed both, as with
    // Kafka Connect's copy.existing).
    let coll = orders(&s.env, &db).await;
    coll.insert_one(doc! { "n": 1 }).await.unwrap();
    create_source(
        &s,
        &name,
        &db,
        json!({ "source": { "startup": { "mode": "copyExisting" } } }),
    )
    .await;
    s.wait_connector(&name, "running", running).await;
    read_records(&s.env, &topic, 1).await;
    // A change event, so a resume token is stored: without a reset, a restart would resume after it.
    coll.insert_one(doc! { "n": 2 }).await.unwrap();
    read_records(&s.env, &topic, 2).await;

    let annotate = |value: &str| json!({ "metadata": { "annotations": { "sluice.dev/reset-offsets": value } } });
    s.connectors()
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&annotate("r1")),
        )
        .await
        .unwrap();
    wait_for("OffsetResetPending", WAIT, || async {
        let events = events_for(&s.client, &s.ns, &name).await;
        events
            .iter()
            .any(|(_, r, _)| r == "OffsetResetPending")
            .then_some(())
            .ok_or(format!("{events:?}"))
    })
    .await;

    let stop = json!({ "spec": { "state": "stopped" } });
    s.connectors()
        .patch(&name, &PatchParams::default(), &Patch::Merge(&stop))
        .await
        .unwrap();
    let reset = s
        .wait_connector(&name, "offsets reset", |c| {
            c.status
                .as_ref()
                .and_then(|s| s.offsets.as_ref())
                .is_some_and(|o| o.last_reset_request.as_deref() == Some("r1"))
        })
        .await;
    let offsets = reset.status.unwrap().offsets.unwrap();
    assert_eq!(offsets.resets.len(), 1);
    assert!(
        offsets.resets[0]
            .target
            .contains(&format!("partition {name}")),
        "{offsets:?}"
    );

    let start = json!({ "spec": { "state": "running" } });
    s.connectors()
        .patch(&name, &PatchParams::default(), &Patch::Merge(&start))
        .await
        .unwrap();
    s.wait_connector(&name, "running again", running).await;
    let copied = read_records(&s.env, &topic, 4).await;
    assert_eq!(
        copied.iter().filter(|(_, v)| v.contains("\"n\":1")).count(),
        2,
        "no stored token after the reset: copyExisting copied the document again: {copied:?}"
    );
}

#[tokio::test]
async fn sink_error_counters_show_per_task_and_in_totals_and_degraded_comes_and_goes() {
    let Some(s) = setup("rec-metrics").await else {
        return;
    };
    let topic = unique("orders");
    let dlq = unique("orders-dlq");
    create_topic(&s.env, &topic, 1).await;
    create_topic(&s.env, &dlq, 1).await;
    create_secret(
        &s.client,
        &s.ns,
        "mongo",
        &[("uri", s.env.mongodb_uri.as_str())],
    )
    .await;
    let name = unique("orders");
    let conn: Connector = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Connector", "metadata": { "name": name },
        "spec": {
            "type": "mongodb-sink", "tasksMax": 1,
            "kafka": { "bootstrapServers": s.env.kafka_bootstrap },
            "mongodb": { "connectionUriSecretRef": { "name": "mongo", "key": "uri" }, "database": unique("metrics"), "collection": "orders" },
            "sink": { "topics": [topic] },
            "errors": { "tolerance": "all", "deadLetterQueueTopic": dlq, "contextHeadersEnable": true }
        }
    }))
    .unwrap();
    s.connectors()
        .create(&PostParams::default(), &conn)
        .await
        .unwrap();
    s.wait_connector(&name, "running", running).await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &s.env.kafka_bootstrap)
        .create()
        .unwrap();
    for value in [
        r#"{"a": 1}"#,
        "{poison",
        r#"{"a": 2}"#,
        "{poison",
        "{poison",
    ] {
        producer
            .send(
                FutureRecord::to(&topic).key("k").payload(value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let counted = s
        .wait_connector(&name, "3 record errors in status", |c| {
            c.status.as_ref().is_some_and(|st| {
                st.totals
                    .as_ref()
                    .is_some_and(|t| t.dead_letter_queue_produce_requests == 3)
                    && has(c, "Degraded", "True", "RecordErrors")
            })
        })
        .await;
    let status = counted.status.clone().unwrap();
    let task = &status.tasks[0];
    let m = task.metrics.clone().unwrap();
    assert_eq!(
        (
            m.total_record_errors,
            m.total_records_skipped,
            m.dead_letter_queue_produce_requests
        ),
        (3, 3, 3)
    );
    assert!(m.last_error_timestamp > 0);
    assert_eq!((task.records_in, task.records_out), (Some(5), Some(2)));
    let last = task.last_error.clone().unwrap();
    assert_eq!(last.class, "org.apache.kafka.connect.errors.DataException");
    assert_eq!(last.stage, "VALUE_CONVERTER");
    assert!(
        !last.message.contains("poison"),
        "no record contents: {last:?}"
    );
    let (_, _, message) = condition(&counted, "Degraded");
    assert_eq!(
        message,
        format!("task 0: 3 record errors in the last 20s, 3 sent to DLQ {dlq}")
    );
    let table = kubectl(&s.env, &["-n", &s.ns, "get", "conn", &name]);
    let row = first_row(&table);
    assert_eq!(
        (
            row["FAILURES"].as_str(),
            row["SKIPPED"].as_str(),
            row["DLQ"].as_str()
        ),
        ("3", "3", "3"),
        "{table}"
    );

    // Degraded clears by itself once the errors are older than the window.
    s.wait_connector(&name, "Degraded cleared", |c| {
        has(c, "Degraded", "False", "AsExpected")
    })
    .await;

    // A replaced task pod's own counters start from zero; the totals go on from the ledger the old pod
    // committed with its offsets.
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let old_uid = pods.get(&format!("{name}-task-0")).await.unwrap().uid();
    pods.delete(&format!("{name}-task-0"), &DeleteParams::default())
        .await
        .unwrap();
    let replaced = s
        .wait_connector(&name, "a new pod for task 0", |c| {
            running(c)
                && c.status.as_ref().is_some_and(|st| {
                    st.tasks[0].pod_uid.is_some() && st.tasks[0].pod_uid != old_uid
                })
        })
        .await;
    producer
        .send(
            FutureRecord::to(&topic).key("k").payload("{poison"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let after = s
        .wait_connector(&name, "the new pod's error counted", |c| {
            c.status.as_ref().is_some_and(|st| {
                st.tasks[0]
                    .metrics
                    .as_ref()
                    .is_some_and(|m| m.total_record_errors == 1)
                    && st
                        .totals
                        .as_ref()
                        .is_some_and(|t| t.total_record_errors >= 4)
            })
        })
        .await;
    let st = after.status.unwrap();
    assert_eq!(
        st.totals.unwrap().total_record_errors,
        4,
        "3 of the replaced pod + 1"
    );
    // One partition: its ledger, at the offset after the 6 records.
    let ledger = &st.partition_totals[&format!("{topic}-0")];
    assert_eq!(
        (ledger.position, ledger.errors.total_record_errors),
        (6, 4),
        "{:?}",
        st.partition_totals
    );
    drop(replaced);
}

#[tokio::test]
async fn a_resume_token_older_than_half_the_oplog_window_is_at_risk() {
    let Some(s) = setup("rec-risk").await else {
        return;
    };
    let db = unique("risk");
    let name = unique("events");
    // The fault peer plays a replica set whose oplog holds the last 30 s: first entry 30 s ago, last now,
    // for this source's task only (its appName): another source would start at this "newest" entry.
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let app_name = format!("sluice/{}/{name}/0", s.ns);
    for (order, t) in [(1, now - 30), (-1, now)] {
        s.env
            .fault_peer_rule(json!({
                "command": "find", "database": "local", "collection": "oplog.rs", "appName": app_name,
                "match": { "sort": { "$natural": order } },
                "reply": { "ok": 1, "cursor": { "id": { "$numberLong": "0" }, "ns": "local.oplog.rs",
                           "firstBatch": [{ "ts": { "$timestamp": { "t": t, "i": 1 } } }] } }
            }))
            .await;
    }
    create_source(&s, &name, &db, json!({})).await;
    s.wait_connector(&name, "running", running).await;
    orders(&s.env, &db)
        .await
        .insert_one(doc! { "n": 1 })
        .await
        .unwrap();
    let fresh = s
        .wait_connector(&name, "ResumeTokenAtRisk False", |c| {
            has(c, "ResumeTokenAtRisk", "False", "WithinOplogWindow")
        })
        .await;
    let task = fresh.status.unwrap().tasks[0].clone();
    let token = task.resume_token.unwrap();
    assert!(
        token.time.is_some() && token.oplog_first_time.is_some() && token.oplog_last_time.is_some()
    );
    // No new changes and no heartbeats: the token ages past half the window (15 s).
    let risky = s
        .wait_connector(&name, "ResumeTokenAtRisk True", |c| {
            has(
                c,
                "ResumeTokenAtRisk",
                "True",
                "TokenOlderThanHalfTheOplogWindow",
            )
        })
        .await;
    let (_, _, message) = condition(&risky, "ResumeTokenAtRisk");
    assert!(message.contains("oplog window of 30s"), "{message}");
}

#[tokio::test]
async fn a_resume_point_lost_on_every_attempt_rotates_at_most_max_rotations_times() {
    let Some(s) = setup("rec-loop").await else {
        return;
    };
    let db = unique("loop");
    let name = unique("events");
    // Every change stream this source opens is refused: no rotation can help.
    s.env
        .fault_peer_rule(json!({
            "command": "aggregate", "changeStream": true, "database": db,
            "reply": { "ok": 0, "code": 286, "codeName": "ChangeStreamHistoryLost",
                       "errmsg": "Resume of change stream was not possible, as the resume point may no longer be in the oplog." }
        }))
        .await;
    let bounded = json!({
        "source": { "resumeTokenRecovery": { "maxRotations": 2, "rotationWindowSeconds": 3600 } },
        "restart": { "backoffInitialSeconds": 1, "backoffMaxSeconds": 2 }
    });
    create_source(&s, &name, &db, bounded).await;
    let looping = s
        .wait_connector(&name, "Degraded RotationLoop", |c| {
            has(c, "Degraded", "True", "RotationLoop")
        })
        .await;
    assert_eq!(rotations(&looping), 2, "{:?}", looping.status);
    assert_eq!(partition(&looping), format!("{name}.2"));
    let (_, _, message) = condition(&looping, "Degraded");
    assert!(
        message.contains("after 2 automatic rotations within 3600s")
            && message.contains(&format!("{name}.1 -> {name}.2"))
            && message.contains("sluice.dev/rotate-offsets"),
        "{message}"
    );
    // It stays so: no third rotation, no restart loop of the failed task.
    let api = s.connectors();
    holds_for("two rotations", Duration::from_secs(4), || async {
        let c = api.get(&name).await.map_err(|e| e.to_string())?;
        let restarts = c.status.as_ref().map(|st| st.tasks[0].restarts);
        if rotations(&c) == 2 && restarts == looping.status.as_ref().map(|st| st.tasks[0].restarts)
        {
            Ok(())
        } else {
            Err(format!("{:?}", c.status))
        }
    })
    .await;
}
