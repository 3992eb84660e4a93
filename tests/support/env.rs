//! The loopback environment's coordinates, from the variables `tests/env/envctl.py` writes to `.env/env`,
//! and the fault peer's control API.

use kube::Client;

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
