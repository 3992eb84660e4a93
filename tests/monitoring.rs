//! The operations kit against running processes: every metric the chart's Grafana dashboard
//! (`charts/sluice/files/sluice-dashboard.json`) and alerts (`files/sluice-rules.yaml`) use is one that a
//! running operator or task pod exports, with the labels they group by, so neither shows "no data" for a
//! misspelt name. (`tests/chart.rs` lints the rules with promtool and runs their unit tests.)

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use serde_json::json;
use support::{create_secret, create_topic, http_get, produce_values, setup, unique, wait_for};

const WAIT: Duration = Duration::from_secs(90);

fn chart_file(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("charts/sluice/files")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The PromQL expressions of the dashboard's panels and the rules' alerts.
fn expressions() -> Vec<String> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&chart_file("sluice-dashboard.json")).unwrap();
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    let rules: serde_yaml::Value = serde_yaml::from_str(&chart_file("sluice-rules.yaml")).unwrap();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            exprs.push(rule["expr"].as_str().unwrap().to_string());
        }
    }
    exprs
}

/// The sluice series names in an expression.
fn series_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("sluice_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        out.insert(name);
    }
    out
}

/// Every sample of a scrape: series name → the label names it has.
fn samples(scrape: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..name_end].to_string()).or_default();
        if let Some(body) = line[name_end..]
            .strip_prefix('{')
            .and_then(|b| b.split_once('}'))
        {
            for pair in body.0.split(',').filter(|p| !p.is_empty()) {
                labels.insert(pair.split('=').next().unwrap().to_string());
            }
        }
    }
    out
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_use_is_exported_by_a_running_operator_or_task() {
    let Some(s) = setup("monitoring").await else {
        return;
    };
    let topic = unique("orders");
    create_topic(&s.env, &topic, 1).await;
    create_secret(
        &s.client,
        &s.ns,
        "mongo",
        &[("uri", s.env.mongodb_uri.as_str())],
    )
    .await;
    let dlq_topic = unique("orders-dlq");
    let dlq: sluice::crd::DeadLetterQueue = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "DeadLetterQueue", "metadata": { "name": "orders-dlq" },
        "spec": { "topicName": dlq_topic, "kafka": { "bootstrapServers": s.env.kafka_bootstrap } }
    }))
    .unwrap();
    Api::<sluice::crd::DeadLetterQueue>::namespaced(s.client.clone(), &s.ns)
        .create(&Default::default(), &dlq)
        .await
        .unwrap();
    s.create_connector(
        "orders-sink",
        json!({}),
        json!({
            "type": "mongodb-sink",
            "kafka": { "bootstrapServers": s.env.kafka_bootstrap },
            "mongodb": { "connectionUriSecretRef": { "name": "mongo", "key": "uri" }, "database": unique("mon"), "collection": "orders" },
            "sink": { "topics": [topic] },
            "errors": { "tolerance": "all", "deadLetterQueueRef": { "name": "orders-dlq" } }
        }),
    )
    .await;
    produce_values(&s.env, &topic, &["{poison", r#"{"ok": 1}"#]).await;
    // A source through the fault peer, which plays an oplog of the last 30 s for its task only (its
    // appName), so the operator has a token age and an oplog window to export.
    let source = unique("events");
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    for (order, t) in [(1, now - 30), (-1, now)] {
        s.env
            .fault_peer_rule(json!({
                "command": "find", "database": "local", "collection": "oplog.rs",
                "appName": format!("sluice/{}/{source}/0", s.ns),
                "match": { "sort": { "$natural": order } },
                "reply": { "ok": 1, "cursor": { "id": { "$numberLong": "0" }, "ns": "local.oplog.rs",
                           "firstBatch": [{ "ts": { "$timestamp": { "t": t, "i": 1 } } }] } }
            }))
            .await;
    }
    create_secret(
        &s.client,
        &s.ns,
        "peer",
        &[("uri", s.env.fault_peer_uri.as_str())],
    )
    .await;
    s.create_connector(
        &source,
        json!({}),
        json!({
            "type": "mongodb-source",
            "kafka": { "bootstrapServers": s.env.kafka_bootstrap },
            "mongodb": { "connectionUriSecretRef": { "name": "peer", "key": "uri" }, "database": unique("mon"), "collection": "orders" },
            "source": { "topicPrefix": "mon", "heartbeat": { "intervalMs": 0 } }
        }),
    )
    .await;
    s.wait_connector(
        &source,
        "the source's token and oplog window in status",
        |c| {
            c.status
                .as_ref()
                .and_then(|st| st.tasks.first())
                .and_then(|t| t.resume_token.as_ref())
                .is_some_and(|r| r.time.is_some() && r.oplog_first_time.is_some())
        },
    )
    .await;
    // An on-demand rotation (what `sluice rotate` does), for the last-rotation series.
    let said = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["rotate", &source, "-n", &s.ns])
        .output()
        .expect("run sluice rotate");
    assert!(
        said.status.success(),
        "{}",
        String::from_utf8_lossy(&said.stderr)
    );

    // The task pod's /metrics (its pod IP, port 8080) once it has handled the records.
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let pods = &pods;
    let task = wait_for("the task's metrics with records", WAIT, || async {
        let pod = pods
            .get("orders-sink-task-0")
            .await
            .map_err(|e| e.to_string())?;
        let ip = pod.status.and_then(|st| st.pod_ip).ok_or("no pod IP yet")?;
        let (_, body) = http_get(&format!("{ip}:8080"), "/metrics")
            .await
            .ok_or("no answer")?;
        if body.contains("sluice_task_records_in_total{")
            && body.contains("sluice_task_total_record_errors_total{")
        {
            Ok(body)
        } else {
            Err(body)
        }
    })
    .await;
    let operator = &s.operator;
    let operator_scrape = wait_for(
        "the operator's Connector and DeadLetterQueue series",
        WAIT,
        || async {
            let (_, body) = operator.get("/metrics").await.ok_or("no answer")?;
            let all = [
                "sluice_operator_connector_ready{",
                "sluice_operator_dead_letter_queue_depth{",
                "sluice_operator_resume_token_age_seconds{",
                "sluice_operator_oplog_window_seconds{",
                "sluice_operator_offset_last_rotation_timestamp_seconds{",
            ];
            if all.iter().all(|series| body.contains(series)) {
                Ok(body)
            } else {
                Err(body)
            }
        },
    )
    .await;

    let mut exported = samples(&task);
    exported.extend(samples(&operator_scrape));
    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    for expr in expressions() {
        for name in series_names(&expr) {
            if !exported.contains_key(&name) {
                missing.push(format!("{name} (in {expr})"));
            }
            used.insert(name);
        }
    }
    assert!(missing.is_empty(), "not exported:\n{}", missing.join("\n"));
    assert!(used.len() >= 15, "the dashboard and rules use {used:?}");
    // The labels they select and group by are on the series.
    for (name, label) in [
        ("sluice_task_records_in_total", "connector"),
        ("sluice_task_records_in_total", "task"),
        ("sluice_task_records_in_total", "namespace"),
        ("sluice_task_dependency_unavailable", "dependency"),
        ("sluice_operator_connector_ready", "connector"),
        ("sluice_operator_task_restarts", "task"),
        (
            "sluice_operator_dead_letter_queue_depth",
            "dead_letter_queue",
        ),
    ] {
        assert!(
            exported.get(name).is_some_and(|l| l.contains(label)),
            "{name} has no {label} label: {:?}",
            exported.get(name)
        );
    }
    // The values are what the statuses say: the oplog window the peer plays, the DLQ's depth.
    let window = operator_scrape
        .lines()
        .find(|l| l.starts_with("sluice_operator_oplog_window_seconds{") && l.contains(&source))
        .unwrap_or_default();
    assert!(
        window.ends_with(" 30.0") || window.ends_with(" 30"),
        "{window}"
    );
    wait_for("DLQ depth 1 on /metrics", WAIT, || async {
        let (_, body) = operator.get("/metrics").await.ok_or("no answer")?;
        let line = body
            .lines()
            .find(|l| {
                l.starts_with("sluice_operator_dead_letter_queue_depth{")
                    && l.contains("orders-dlq")
            })
            .unwrap_or_default()
            .to_string();
        if line.ends_with(" 1") {
            Ok(())
        } else {
            Err(line)
        }
    })
    .await;
}
