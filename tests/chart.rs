//! The Helm chart and `deploy/` on the loopback cluster: the chart lints, the plain manifests are what the
//! chart renders, rendered manifests pass the apiserver's dry run in both modes, `helm install` runs the
//! operator as a pod that brings every example to Ready, and in namespaced mode the operator's ServiceAccount
//! can't read Secrets outside its namespace while task pods' ServiceAccount can't call the API at all.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde::Deserialize;
use sluice::crd::dead_letter_queue::replay_phase;
use sluice::crd::{Connector, DeadLetterQueue};
use support::{Env, create_secret, install_crds, namespace, wait_for};

const WAIT: Duration = Duration::from_secs(120);
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/sluice");
/// What the examples call the Kafka bootstrap address; tests put the loopback broker's in its place.
const EXAMPLE_KAFKA: &str = "my-cluster-kafka-bootstrap:9092";

fn run(env: &Env, tool: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(format!("{}/{tool}", env.bin_dir))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Runs a tool of the environment; panics with its stderr when it fails.
fn ok(env: &Env, tool: &str, args: &[&str], stdin: Option<&str>) -> String {
    let out = run(env, tool, args, stdin);
    assert!(
        out.status.success(),
        "{tool} {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn example(name: &str, env: &Env) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .replace(EXAMPLE_KAFKA, &env.kafka_bootstrap)
}

#[test]
fn the_chart_lints_and_deploy_is_what_it_renders() {
    let Some(env) = Env::get() else { return };
    ok(&env, "helm", &["lint", "--strict", CHART], None);
    let rendered = ok(
        &env,
        "helm",
        &[
            "template",
            "sluice",
            CHART,
            "--namespace",
            "sluice-system",
            "--include-crds",
        ],
        None,
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/base/sluice.yaml");
    let committed = std::fs::read_to_string(&path).unwrap();
    let body = committed
        .split_once('\n')
        .map(|(_, b)| b)
        .unwrap_or_default();
    assert!(
        body == rendered,
        "deploy/base/sluice.yaml differs from the chart: run `make crds deploy`"
    );
    // The ServiceMonitor only when asked for (its CRD belongs to prometheus-operator).
    assert!(!rendered.contains("kind: ServiceMonitor"));
    let monitored = ok(
        &env,
        "helm",
        &[
            "template",
            "x",
            CHART,
            "--set",
            "metrics.serviceMonitor.enabled=true",
        ],
        None,
    );
    assert!(
        monitored.contains("kind: ServiceMonitor") && monitored.contains("port: metrics"),
        "{monitored}"
    );
    // A wrong value fails at install time, naming the value.
    let out = run(
        &env,
        "helm",
        &["template", "x", CHART, "--set", "replicas=two"],
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/replicas"),
        "{out:?}"
    );
}

#[tokio::test]
async fn rendered_manifests_pass_the_apiservers_dry_run_in_both_modes() {
    let Some(env) = Env::get() else { return };
    let client = env.kube().await;
    install_crds(&client).await;
    let ns = namespace(&client, &env, "chart-dry").await;
    for mode in [
        vec![],
        vec!["--set".to_string(), format!("watchNamespace={ns}")],
    ] {
        let mut args = vec!["template", "dry", CHART, "--namespace", &ns];
        args.extend(mode.iter().map(String::as_str));
        let rendered = ok(&env, "helm", &args, None);
        let applied = ok(
            &env,
            "kubectl",
            &["apply", "--dry-run=server", "-f", "-"],
            Some(&rendered),
        );
        assert!(
            applied.contains("deployment.apps/dry-sluice created (server dry run)"),
            "{applied}"
        );
    }
}

#[tokio::test]
async fn helm_install_runs_the_operator_as_a_pod_that_makes_every_example_ready() {
    let Some(env) = Env::get() else { return };
    let client = env.kube().await;
    install_crds(&client).await;
    let ns = namespace(&client, &env, "chart-install").await;
    ok(
        &env,
        "helm",
        &[
            "install",
            "sluice",
            CHART,
            "--namespace",
            &ns,
            "--set",
            &format!("watchNamespace={ns}"),
            "--set",
            "image.tag=dev",
            "--set",
            "taskStatusInterval=2s",
            "--set",
            "deadLetterRefresh=2s",
            "--wait",
            "--timeout",
            "120s",
        ],
        None,
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let operator = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=sluice-operator"))
        .await
        .unwrap()
        .items;
    assert_eq!(operator.len(), 1, "one operator pod");
    assert_eq!(
        operator[0]
            .spec
            .as_ref()
            .unwrap()
            .service_account_name
            .as_deref(),
        Some("sluice")
    );

    // The examples, as a user applies them.
    create_secret(
        &client,
        &ns,
        "mongodb",
        &[("uri", env.mongodb_uri.as_str())],
    )
    .await;
    support::create_topic_if_missing(&env, "orders", 1).await;
    for file in [
        "sink-with-dead-letter-queue.yaml",
        "source-with-heartbeats.yaml",
        "source-exactly-once.yaml",
        "sink-with-dead-letter-routes.yaml",
    ] {
        ok(
            &env,
            "kubectl",
            &["-n", &ns, "apply", "-f", "-"],
            Some(&example(file, &env)),
        );
    }
    for kind in [
        "conn/orders-sink",
        "conn/orders-cdc",
        "conn/orders-cdc-eo",
        "dlq/orders-dlq",
        "dlq/orders-sink-dlq",
        "conn/orders-routed-sink",
        "dlq/orders-dlt",
        "dlq/orders-write-errors",
    ] {
        ok(
            &env,
            "kubectl",
            &[
                "-n",
                &ns,
                "wait",
                "--for=condition=Ready",
                kind,
                "--timeout=120s",
            ],
            None,
        );
    }
    // Task pods run as the task ServiceAccount, which has no rights.
    let task = pods.get("orders-sink-task-0").await.unwrap();
    let spec = task.spec.unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("sluice-task"));
    assert_eq!(spec.automount_service_account_token, Some(false));

    ok(
        &env,
        "kubectl",
        &["-n", &ns, "apply", "-f", "-"],
        Some(&example("dead-letter-replay.yaml", &env)),
    );
    let dlqs: Api<DeadLetterQueue> = Api::namespaced(client.clone(), &ns);
    wait_for("both example replays done", WAIT, || async {
        let d = dlqs
            .get("orders-sink-dlq")
            .await
            .map_err(|e| e.to_string())?;
        let replays = d.status.map(|s| s.replays).unwrap_or_default();
        if replays.len() == 2 && replays.iter().all(|r| r.phase == replay_phase::SUCCEEDED) {
            Ok(())
        } else {
            Err(format!("{replays:#?}"))
        }
    })
    .await;
    let connectors: Api<Connector> = Api::namespaced(client.clone(), &ns);
    let sink = connectors.get("orders-sink").await.unwrap();
    assert!(sink.status.is_some_and(|s| !s.tasks.is_empty()));
    // The exactly-once example's task reports its delivery mode in the Connector's status.
    wait_for(
        "the exactly-once task's delivery in status",
        WAIT,
        || async {
            let c = connectors
                .get("orders-cdc-eo")
                .await
                .map_err(|e| e.to_string())?;
            let delivery = c
                .status
                .and_then(|s| s.tasks.first().cloned())
                .and_then(|t| t.delivery);
            match delivery {
                Some(d) if d.mode == "exactlyOnce" && d.transactional_id.is_some() => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    // High availability and upgrades: `helm upgrade --wait` to two replicas with a changed setting
    // finishes (a standby replica is Ready), both run the new setting, and exactly one leads.
    ok(
        &env,
        "helm",
        &[
            "upgrade",
            "sluice",
            CHART,
            "--namespace",
            &ns,
            "--reuse-values",
            "--set",
            "replicas=2",
            "--set",
            "taskStatusInterval=3s",
            "--wait",
            "--timeout",
            "180s",
        ],
        None,
    );
    let running: Vec<Pod> = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=sluice-operator"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let names: Vec<String> = running.iter().map(|p| p.name_any()).collect();
    assert_eq!(names.len(), 2, "two operator pods: {names:?}");
    for pod in &running {
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let interval = container
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "SLUICE_TASK_STATUS_INTERVAL")
            .and_then(|e| e.value.clone());
        assert_eq!(interval.as_deref(), Some("3s"), "{}", pod.name_any());
    }
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &ns);
    wait_for("one of the new pods to lead", WAIT, || async {
        let holder = leases
            .get_opt("sluice-operator")
            .await
            .map_err(|e| e.to_string())?
            .and_then(|l| l.spec?.holder_identity);
        match holder {
            Some(h) if names.contains(&h) => Ok(()),
            other => Err(format!("holder {other:?}, pods {names:?}")),
        }
    })
    .await;

    // Namespaced mode: Secrets here, not elsewhere; nothing for the task ServiceAccount.
    let can = |args: &[&str]| {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        let out = run(&env, "kubectl", &all, None);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let operator_sa = format!("--as=system:serviceaccount:{ns}:sluice");
    let task_sa = format!("--as=system:serviceaccount:{ns}:sluice-task");
    assert_eq!(can(&["get", "secrets", "-n", &ns, &operator_sa]), "yes");
    assert_eq!(
        can(&["get", "secrets", "-n", "default", &operator_sa]),
        "no"
    );
    assert_eq!(
        can(&["list", "secrets", "--all-namespaces", &operator_sa]),
        "no"
    );
    assert_eq!(
        can(&["create", "pods", "-n", "default", &operator_sa]),
        "no"
    );
    assert_eq!(
        can(&["delete", "connectors.sluice.dev", "-n", &ns, &operator_sa]),
        "no"
    );
    assert_eq!(can(&["get", "pods", "-n", &ns, &task_sa]), "no");
    assert_eq!(can(&["get", "secrets", "-n", &ns, &task_sa]), "no");
    let operator_name = names[0].clone();
    ok(
        &env,
        "helm",
        &["uninstall", "sluice", "--namespace", &ns, "--wait"],
        None,
    );
    wait_for("the operator pod gone", WAIT, || async {
        match pods
            .get_opt(&operator_name)
            .await
            .map_err(|e| e.to_string())?
        {
            None => Ok(()),
            Some(_) => Err("still there".to_string()),
        }
    })
    .await;

    // What uninstall leaves (README "Uninstall"): the resources and their task pods, which keep running;
    // deleting the resources takes the pods with them, without an operator (no finalizers).
    let task_pods = ListParams::default().labels("sluice.dev/connector");
    let left = pods.list(&task_pods).await.unwrap().items;
    assert!(!left.is_empty(), "task pods stay after uninstall");
    assert!(
        !connectors
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    ok(
        &env,
        "kubectl",
        &[
            "delete",
            "connectors.sluice.dev,deadletterqueues.sluice.dev",
            "--all",
            "--namespace",
            &ns,
            "--wait",
        ],
        None,
    );
    wait_for("the task pods gone with their Connectors", WAIT, || async {
        let left = pods
            .list(&task_pods)
            .await
            .map_err(|e| e.to_string())?
            .items;
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{:?}",
                left.iter().map(|p| p.name_any()).collect::<Vec<_>>()
            ))
        }
    })
    .await;
}

/// The operations kit: promtool (built from Prometheus' Go module) checks the alerting rules and runs
/// their unit tests (`tests/monitoring/rules_test.yaml`); the dashboard is Grafana JSON whose every panel
/// queries something; the chart renders both, off by default, as they are in `charts/sluice/files/`.
/// (`tests/monitoring.rs` checks that a running operator and task export every series they use.)
#[test]
fn the_alerting_rules_pass_promtool_and_the_chart_ships_them_and_the_dashboard_as_written() {
    let Some(env) = Env::get() else { return };
    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/charts/sluice/files/sluice-rules.yaml"
    );
    let checked = ok(&env, "promtool", &["check", "rules", rules], None);
    assert!(checked.contains("SUCCESS: 9 rules found"), "{checked}");
    let tests = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/monitoring/rules_test.yaml"
    );
    ok(&env, "promtool", &["test", "rules", tests], None);

    let dashboard_text =
        std::fs::read_to_string(Path::new(CHART).join("files/sluice-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard_text).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids: Vec<i64> = panels.iter().map(|p| p["id"].as_i64().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for p in panels {
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", p["title"]);
        assert!(
            targets
                .iter()
                .all(|t| t["expr"].as_str().is_some_and(|e| e.contains("sluice_")))
        );
    }

    let template = |extra: &[&str]| {
        let mut args = vec!["template", "sluice", CHART, "--namespace", "sluice-system"];
        args.extend_from_slice(extra);
        ok(&env, "helm", &args, None)
    };
    let kinds = |rendered: &str| -> Vec<String> {
        serde_yaml::Deserializer::from_str(rendered)
            .filter_map(|d| serde_yaml::Value::deserialize(d).ok())
            .filter_map(|v| v["kind"].as_str().map(String::from))
            .collect()
    };
    let plain = kinds(&template(&[]));
    for kind in ["PodMonitor", "PrometheusRule"] {
        assert!(
            !plain.iter().any(|k| k == kind),
            "off by default: {plain:?}"
        );
    }
    let all = template(&[
        "--set",
        "monitoring.podMonitor.enabled=true",
        "--set",
        "monitoring.grafanaDashboard.enabled=true",
        "--set",
        "monitoring.prometheusRule.enabled=true",
    ]);
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&all)
        .filter_map(|d| serde_yaml::Value::deserialize(d).ok())
        .collect();
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let rule = find("PrometheusRule");
    let written: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(rules).unwrap()).unwrap();
    assert_eq!(
        rule["spec"]["groups"], written["groups"],
        "the rules as written"
    );
    let dashboards = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("the dashboard ConfigMap with the sidecar's label");
    let shipped: serde_json::Value = serde_json::from_str(
        dashboards["data"]["sluice-dashboard.json"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(shipped, dashboard, "the dashboard as written");
    let pod_monitor = find("PodMonitor");
    assert_eq!(
        pod_monitor["spec"]["podMetricsEndpoints"][0]["port"],
        "http"
    );
}
