//! What the integration tests share: the loopback environment's coordinates (from the variables that
//! `tests/env/envctl.py` writes to `.env/env`), polling with a deadline, and a namespace per test.
#![allow(dead_code)] // each test crate uses a different part of this module

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};

/// The loopback environment, as `envctl.py up` describes it.
pub struct Env {
    pub dir: String,
    pub kafka_bootstrap: String,
    pub mongodb_uri: String,
    pub fault_peer_uri: String,
    pub fault_peer_control: String,
    pub marker: String,
    pub node_pods_dir: String,
    pub bin_dir: String,
}

impl Env {
    /// The environment, or `None` when it is not up. With `SLUICE_REQUIRE_ENV=1` (make test, CI) a missing
    /// environment fails the test instead of skipping it.
    pub fn get() -> Option<Env> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let names = [
            "SLUICE_ENV_DIR",
            "KUBECONFIG",
            "KAFKA_BOOTSTRAP_SERVERS",
            "MONGODB_URI",
            "SLUICE_FAULT_PEER_URI",
            "SLUICE_FAULT_PEER_CONTROL",
            "SLUICE_ENV_MARKER",
            "SLUICE_NODE_PODS_DIR",
            "SLUICE_BIN_DIR",
        ];
        let missing: Vec<&str> = names.iter().copied().filter(|n| var(n).is_none()).collect();
        if !missing.is_empty() {
            if std::env::var("SLUICE_REQUIRE_ENV").as_deref() == Ok("1") {
                panic!(
                    "SLUICE_REQUIRE_ENV=1 but the loopback environment is not set up (missing {}); \
                     run `make test`, or `make env-up` and `source .env/env`",
                    missing.join(", ")
                );
            }
            eprintln!(
                "skipped: loopback environment not up (missing {})",
                missing.join(", ")
            );
            return None;
        }
        Some(Env {
            dir: var("SLUICE_ENV_DIR")?,
            kafka_bootstrap: var("KAFKA_BOOTSTRAP_SERVERS")?,
            mongodb_uri: var("MONGODB_URI")?,
            fault_peer_uri: var("SLUICE_FAULT_PEER_URI")?,
            fault_peer_control: var("SLUICE_FAULT_PEER_CONTROL")?,
            marker: var("SLUICE_ENV_MARKER")?,
            node_pods_dir: var("SLUICE_NODE_PODS_DIR")?,
            bin_dir: var("SLUICE_BIN_DIR")?,
        })
    }

    /// Scripts the fault peer (see `tests/env/faultpeer.py`); returns the rule's id.
    pub async fn fault_peer_rule(&self, rule: serde_json::Value) -> u64 {
        let reply = http_json(&self.fault_peer_control, "POST", "/rules", Some(rule)).await;
        reply["id"].as_u64().expect("rule id")
    }

    /// The fault peer's rules, with how often each was seen and fired.
    pub async fn fault_peer_rules(&self) -> serde_json::Value {
        http_json(&self.fault_peer_control, "GET", "/rules", None).await
    }

    /// How often the fault peer saw each command (and `changeStreamAggregates`).
    pub async fn fault_peer_commands(&self) -> serde_json::Value {
        http_json(&self.fault_peer_control, "GET", "/commands", None).await
    }

    pub async fn kube(&self) -> Client {
        Client::try_default()
            .await
            .expect("kube client from KUBECONFIG")
    }
}

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

/// Polls `check` until it returns `Some`, or panics after `timeout` with the last thing it saw.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A name unique to this test run: `<prefix>-<random>`, valid as a namespace, topic or database name.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// Creates a namespace of its own for one test.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = unique(prefix);
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": { "sluice.dev/test": "true" } }
    }))
    .expect("namespace object");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create test namespace");
    name
}

/// Deletes a test's namespace (the namespace controller removes what is in it).
pub async fn delete_namespace(client: &Client, name: &str) {
    let _ = Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

/// A minimal HTTP/1.1 JSON call (for the fault peer's control API; keeps an HTTP client crate out of the
/// build).
async fn http_json(
    base: &str,
    verb: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("fault peer control at {addr}: {e}"));
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{verb} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send to fault peer");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("fault peer reply");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.split(' ')
            .nth(1)
            .is_some_and(|code| code.starts_with('2')),
        "fault peer said {head}: {body}"
    );
    serde_json::from_str(body).expect("JSON from the fault peer")
}

/// The sluice operator binary running against the environment, watching one namespace. It is killed when
/// this value drops (and by the kernel if the test process dies first).
pub struct Operator {
    child: std::process::Child,
    pub metrics_addr: String,
    pub log: std::path::PathBuf,
}

impl Operator {
    pub fn start(env: &Env, namespace: &str, leader_election: bool, identity: &str) -> Operator {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let metrics_addr = format!("127.0.0.1:{port}");
        let log = std::path::Path::new(&env.dir)
            .join("logs")
            .join(format!("operator-{namespace}-{identity}.log"));
        let out = std::fs::File::create(&log).expect("operator log file");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("operator")
            .env("SLUICE_METRICS_ADDR", &metrics_addr)
            .env("SLUICE_WATCH_NAMESPACE", namespace)
            .env("SLUICE_LEADER_ELECTION", leader_election.to_string())
            .env("POD_NAMESPACE", namespace)
            .env("POD_NAME", identity)
            .env("SLUICE_TASK_IMAGE", "ghcr.io/sluice-dev/sluice:dev")
            // Tests read task reports every second and keep record errors "recent" for 20 s.
            .env("SLUICE_TASK_STATUS_INTERVAL", "1s")
            .env("SLUICE_RECORD_ERRORS_WINDOW", "20s")
            .env("SLUICE_DEAD_LETTER_REFRESH", "1s")
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = spawn_marked(env, &mut cmd);
        Operator {
            child,
            metrics_addr,
            log,
        }
    }

    /// The operator's `/readyz` status code (0 if it does not answer).
    pub async fn readyz(&self) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut s) = tokio::net::TcpStream::connect(&self.metrics_addr).await else {
            return 0;
        };
        let req = b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        if s.write_all(req).await.is_err() {
            return 0;
        }
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp).await;
        resp.split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The last lines of the operator's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Creates a Kafka topic for a test.
pub async fn create_topic(env: &Env, topic: &str, partitions: i32) {
    let r = try_create_topic(env, topic, partitions).await;
    assert!(r.is_ok(), "create topic {topic}: {r:?}");
}

/// Creates a Kafka topic unless it exists (for fixed names, such as the examples').
pub async fn create_topic_if_missing(env: &Env, topic: &str, partitions: i32) {
    use rdkafka::types::RDKafkaErrorCode;
    let r = try_create_topic(env, topic, partitions).await;
    assert!(
        matches!(r, Ok(()) | Err(RDKafkaErrorCode::TopicAlreadyExists)),
        "create topic {topic}: {r:?}"
    );
}

async fn try_create_topic(
    env: &Env,
    topic: &str,
    partitions: i32,
) -> Result<(), rdkafka::types::RDKafkaErrorCode> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .create()
        .unwrap();
    let r = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create_topics");
    r.into_iter()
        .next()
        .expect("one result")
        .map(|_| ())
        .map_err(|(_, code)| code)
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

/// A `sluice task` process run directly from a config (as the task pod would run it), on 127.0.0.1.
pub struct TaskProcess {
    child: std::process::Child,
    pub http: String,
    pub termination_log: std::path::PathBuf,
    pub log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl TaskProcess {
    /// Starts a task; `config` is the task config YAML without `httpPort` (chosen here).
    pub fn start(env: &Env, name: &str, config: &str, mongodb_uri: &str) -> TaskProcess {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = dir.path().join("task.yaml");
        std::fs::write(&cfg, format!("{config}\nhttpPort: {port}\n")).unwrap();
        let termination_log = dir.path().join("termination-log");
        let log = std::path::Path::new(&env.dir)
            .join("logs")
            .join(format!("task-{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.args(["task", "--config"])
            .arg(&cfg)
            .env("POD_IP", "127.0.0.1")
            .env("SLUICE_MONGODB_URI", mongodb_uri)
            .env("SLUICE_TERMINATION_LOG", &termination_log)
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = spawn_marked(env, &mut cmd);
        TaskProcess {
            child,
            http: format!("127.0.0.1:{port}"),
            termination_log,
            log,
            _dir: dir,
        }
    }

    /// Whether the process has ended.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// The task's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// GET a path of the task's HTTP server; `None` if it does not answer.
    pub async fn get(&self, path: &str) -> Option<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&self.http).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.ok()?;
        resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
    }

    /// The task's `/v1/status`.
    pub async fn status(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.get("/v1/status").await?).ok()
    }

    /// Waits for the process to end by itself; returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "task did not exit; log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then the exit code.
    pub async fn stop(&mut self) -> i32 {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.wait_exit(Duration::from_secs(30)).await
    }

    pub fn termination_message(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(&self.termination_log).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("termination message {text:?}: {e}"))
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for TaskProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Merges `extra` into `base` (objects key by key; anything else replaces).
pub fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
    match (base, extra) {
        (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

/// Spawns a process of the environment: it carries the environment's marker (so `envctl.py down` finds
/// it) and is killed by the kernel if the test process dies first.
pub fn spawn_marked(env: &Env, cmd: &mut std::process::Command) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let (key, value) = env.marker.split_once('=').expect("marker KEY=VALUE");
    cmd.env(key, value);
    // SAFETY: prctl is async-signal-safe; it only asks for SIGKILL when the parent thread ends.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().expect("start a sluice process")
}

/// A test's environment, Kubernetes client, own namespace and own operator watching it.
pub struct Setup {
    pub env: Env,
    pub client: Client,
    pub ns: String,
    pub operator: Operator,
}

/// Everything a test of the operator needs, in a namespace named after `prefix`; `None` when the
/// environment is not up (and not required).
pub async fn setup(prefix: &str) -> Option<Setup> {
    let env = Env::get()?;
    let client = env.kube().await;
    install_crds(&client).await;
    let ns = namespace(&client, prefix).await;
    let operator = Operator::start(&env, &ns, false, "sluice-test");
    Some(Setup {
        env,
        client,
        ns,
        operator,
    })
}

/// The Events about an object, as (reason, message).
pub async fn events_for(client: &Client, ns: &str, name: &str) -> Vec<(String, String)> {
    use k8s_openapi::api::core::v1::Event;
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&kube::api::ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
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

/// A consumer of `topic` from its start, in a group of its own.
pub fn topic_reader(env: &Env, topic: &str) -> rdkafka::consumer::StreamConsumer {
    use rdkafka::consumer::Consumer;
    let consumer: rdkafka::consumer::StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}
