//! sluice processes a test runs itself (the operator, a task from a config), marked as the environment's so
//! `envctl.py down` finds them, and killed when the test's value drops or the test process dies.

use std::time::Duration;

use super::Env;

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
        self.get("/readyz").await.map(|(code, _)| code).unwrap_or(0)
    }

    /// Whether this replica says it leads (`sluice_operator_leader` on `/metrics`).
    pub async fn leads(&self) -> bool {
        self.get("/metrics")
            .await
            .is_some_and(|(_, body)| body.lines().any(|l| l == "sluice_operator_leader 1"))
    }

    /// GET `path` of the operator's metrics server: (status, body).
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.metrics_addr, path).await
    }

    /// SIGTERM, as Kubernetes stops a pod; waits for the exit and returns its code.
    pub fn terminate(&mut self) -> Option<i32> {
        sigterm(&self.child);
        self.child.wait().ok()?.code()
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
        if std::thread::panicking() {
            eprintln!(
                "--- operator log ({}) ---\n{}",
                self.log.display(),
                self.log_tail()
            );
        }
    }
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

    /// GET a path of the task's HTTP server: the body; `None` if it does not answer.
    pub async fn get(&self, path: &str) -> Option<String> {
        http_get(&self.http, path).await.map(|(_, body)| body)
    }

    /// The task's `/v1/status`.
    pub async fn status(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.get("/v1/status").await?).ok()
    }

    /// Waits until the task reports `running` on `/healthz` (its change stream or subscription is open).
    pub async fn wait_running(&self) {
        super::wait_for("the task to run", Duration::from_secs(60), || async {
            match self.get("/healthz").await.as_deref() {
                Some("running") => Ok(()),
                other => Err(format!("{other:?}; log:\n{}", self.log_tail())),
            }
        })
        .await;
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
        sigterm(&self.child);
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

/// SIGTERM to a child, as Kubernetes stops a pod.
fn sigterm(child: &std::process::Child) {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
}

/// A GET over plain HTTP/1.1 (the operator's and tasks' own servers): status code and body; `None` if
/// nothing answers.
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.ok()?;
    let code = resp.split(' ').nth(1)?.parse().ok()?;
    let (_, body) = resp.split_once("\r\n\r\n")?;
    Some((code, body.to_string()))
}
