//! Kubernetes for tests: the CRDs, kubectl, Secrets, Events, and the per-test namespace harness — every test
//! gets a namespace of its own that is always deleted, and whose pods' state and output are printed when the
//! test fails.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::PostParams;
use kube::{Api, Client};
use sluice::crd::Connector;

use super::{Env, Operator, unique, wait_for};

/// Installs (server-side applies) sluice's CRDs and waits until the apiserver serves them.
pub async fn install_crds(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    use kube::runtime::{conditions, wait::await_condition};
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, crd) in sluice::crd::crds() {
        let name = crd.metadata.name.clone().expect("CRD name");
        api.patch(
            &name,
            &PatchParams::apply("sluice-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("apply CRD {name}: {e}"));
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("CRD {name} not established within 30s"))
        .expect("watch CRD");
    }
}

/// Runs the environment's kubectl with the admin kubeconfig; returns stdout, panics with stderr on failure.
pub fn kubectl(env: &Env, args: &[&str]) -> String {
    let out = std::process::Command::new(format!("{}/kubectl", env.bin_dir))
        .args(args)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A namespace of one test's own (`<prefix>-<random>`). Dropping it deletes the namespace (the namespace
/// controller removes what is in it), also when the test panics; a panicking test first prints every pod of
/// the namespace with its state and the end of its output.
pub struct TestNamespace {
    name: String,
    kubectl: PathBuf,
    pods_dir: PathBuf,
}

impl std::ops::Deref for TestNamespace {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Display for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// Creates a namespace of its own for one test.
pub async fn namespace(client: &Client, env: &Env, prefix: &str) -> TestNamespace {
    let name = unique(prefix);
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": { "sluice.dev/test": "true" } }
    }))
    .expect("namespace object");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create test namespace");
    TestNamespace {
        name,
        kubectl: PathBuf::from(&env.bin_dir).join("kubectl"),
        pods_dir: PathBuf::from(&env.node_pods_dir),
    }
}

impl TestNamespace {
    /// Every pod of the namespace: phase, container states, and the last lines of each container's output.
    pub fn pods_report(&self) -> String {
        let out = std::process::Command::new(&self.kubectl)
            .args(["get", "pods", "-n", &self.name, "-o", "json"])
            .output();
        let Ok(out) = out else {
            return "kubectl did not run".into();
        };
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let mut report = String::new();
        for pod in list["items"].as_array().into_iter().flatten() {
            let name = pod["metadata"]["name"].as_str().unwrap_or_default();
            let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
            report.push_str(&format!(
                "pod {name}: phase {}\n",
                pod["status"]["phase"].as_str().unwrap_or("?")
            ));
            for c in pod["status"]["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let container = c["name"].as_str().unwrap_or_default();
                report.push_str(&format!("  container {container}: {}\n", c["state"]));
                let log = self
                    .pods_dir
                    .join(uid)
                    .join("containers")
                    .join(container)
                    .join("output.log");
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                for line in &lines[lines.len().saturating_sub(15)..] {
                    report.push_str(&format!("    | {line}\n"));
                }
            }
        }
        if report.is_empty() {
            report.push_str("no pods\n");
        }
        report
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- pods of namespace {} ---\n{}",
                self.name,
                self.pods_report()
            );
        }
        let _ = std::process::Command::new(&self.kubectl)
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .output();
    }
}

/// Creates a Secret with string data.
pub async fn create_secret(client: &Client, ns: &str, name: &str, data: &[(&str, &str)]) {
    use k8s_openapi::api::core::v1::Secret;
    let string_data: std::collections::BTreeMap<String, String> = data
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name }, "stringData": string_data
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
}

/// A test's environment, Kubernetes client, own operator and own namespace. Dropping it stops the operator,
/// then deletes the namespace.
pub struct Setup {
    pub operator: Operator,
    pub env: Env,
    pub client: Client,
    pub ns: TestNamespace,
}

/// Everything a test of the operator needs, in a namespace named after `prefix`; `None` when the
/// environment is not up (and not required).
pub async fn setup(prefix: &str) -> Option<Setup> {
    let env = Env::get()?;
    let client = env.kube().await;
    install_crds(&client).await;
    let ns = namespace(&client, &env, prefix).await;
    let operator = Operator::start(&env, &ns, false, "sluice-test");
    Some(Setup {
        operator,
        env,
        client,
        ns,
    })
}

/// How long a test waits for the operator to get somewhere.
pub const OPERATOR_WAIT: Duration = Duration::from_secs(90);

impl Setup {
    pub fn connectors(&self) -> Api<Connector> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates Connector `name` with `spec` on top of `defaults` (merged key by key).
    pub async fn create_connector(
        &self,
        name: &str,
        defaults: serde_json::Value,
        spec: serde_json::Value,
    ) {
        let mut full = defaults;
        super::merge(&mut full, spec);
        let conn: Connector = serde_json::from_value(serde_json::json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Connector",
            "metadata": { "name": name }, "spec": full
        }))
        .expect("a Connector");
        self.connectors()
            .create(&PostParams::default(), &conn)
            .await
            .unwrap_or_else(|e| panic!("create Connector {name}: {e}"));
    }

    /// Waits until `check` accepts the Connector; on timeout shows its status and the operator's log.
    pub async fn wait_connector<F>(&self, name: &str, what: &str, check: F) -> Connector
    where
        F: Fn(&Connector) -> bool,
    {
        let api = self.connectors();
        let check = &check;
        wait_for(&format!("{name}: {what}"), OPERATOR_WAIT, || async {
            let conn = api.get(name).await.map_err(|e| e.to_string())?;
            if check(&conn) {
                Ok(conn)
            } else {
                Err(format!(
                    "status {}\noperator log:\n{}",
                    serde_json::to_string_pretty(&conn.status).unwrap_or_default(),
                    self.operator.log_tail()
                ))
            }
        })
        .await
    }

    /// Waits for a condition of a Connector to have this status and reason.
    pub async fn wait_condition(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        reason: &str,
    ) -> Connector {
        self.wait_connector(name, &format!("{type_}={status} ({reason})"), |c| {
            has(c, type_, status, reason)
        })
        .await
    }
}

/// A Connector's condition as (status, reason, message); empty strings when it has none of that type.
pub fn condition(conn: &Connector, type_: &str) -> (String, String, String) {
    conn.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

/// Whether a Connector's condition has this status and reason.
pub fn has(conn: &Connector, type_: &str, status: &str, reason: &str) -> bool {
    let (s, r, _) = condition(conn, type_);
    s == status && r == reason
}

/// The Events about an object, as (type, reason, message).
pub async fn events_for(client: &Client, ns: &str, name: &str) -> Vec<(String, String, String)> {
    use k8s_openapi::api::core::v1::Event;
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&kube::api::ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect()
}

/// The first row of a `kubectl get` table by column header (`{"DEPTH": "3", …}`).
pub fn first_row(table: &str) -> std::collections::BTreeMap<String, String> {
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default().split_whitespace();
    let row = lines.next().unwrap_or_default().split_whitespace();
    header
        .map(String::from)
        .zip(row.map(String::from))
        .collect()
}

/// The pid of a pod's running container: the local node runs each pod as a process and reports it as the
/// container id `local://<pid>`. `None` while the container is not running.
pub fn running_pid(pod: &Pod) -> Option<i32> {
    let container = pod.status.as_ref()?.container_statuses.as_ref()?.first()?;
    container.state.as_ref()?.running.as_ref()?;
    container
        .container_id
        .as_deref()?
        .strip_prefix("local://")?
        .parse()
        .ok()
}
