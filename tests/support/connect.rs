//! A standalone Kafka Connect worker (Apache Kafka's connect-runtime with the official MongoDB connector,
//! built by Maven from `benches/connect`), for what compares sluice with Connect: `make bench` and the
//! dead-letter parity test. Killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use super::env::Env;
use super::processes::spawn_marked;

/// The JVM as Kafka's scripts start a Connect worker: connect-distributed.sh's heap and kafka-run-class.sh's
/// G1 settings.
pub const JVM: &[&str] = &[
    "-Xms256M",
    "-Xmx2G",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
];

/// A running worker with one connector.
pub struct ConnectWorker {
    pub child: Child,
    /// Its stdout and stderr (log4j at WARN).
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ConnectWorker {
    /// Starts a worker on the environment's broker, with `worker` added to the worker properties (string
    /// keys, schemaless JSON values and a file offset store are set already) and `connector` as the
    /// connector's properties (after `name=<name>` and `tasks.max=1`).
    pub fn start(env: &Env, name: &str, worker: &str, connector: &str) -> ConnectWorker {
        let dir = tempfile::tempdir().unwrap();
        let properties = format!(
            "bootstrap.servers={}\nkey.converter=org.apache.kafka.connect.storage.StringConverter\n\
             value.converter=org.apache.kafka.connect.json.JsonConverter\nvalue.converter.schemas.enable=false\n\
             offset.storage.file.filename={}\nlisteners=http://127.0.0.1:{}\nplugin.discovery=only_scan\n{worker}",
            env.kafka_bootstrap,
            dir.path().join("offsets").display(),
            free_port()
        );
        std::fs::write(dir.path().join("worker.properties"), properties).unwrap();
        std::fs::write(
            dir.path().join("connector.properties"),
            format!("name={name}\ntasks.max=1\n{connector}"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("log4j2.properties"),
            "rootLogger.level = WARN\nrootLogger.appenderRef.stdout.ref = STDOUT\nappender.stdout.type = Console\n\
             appender.stdout.name = STDOUT\nappender.stdout.layout.type = PatternLayout\n\
             appender.stdout.layout.pattern = %d %p %c{1} %m%n\n",
        )
        .unwrap();
        let log = Path::new(&env.dir)
            .join("logs")
            .join(format!("connect-{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new("java");
        cmd.args(JVM)
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                dir.path().join("log4j2.properties").display()
            ))
            .args(["-cp", &classpath()])
            .arg("org.apache.kafka.connect.cli.ConnectStandalone")
            .arg(dir.path().join("worker.properties"))
            .arg(dir.path().join("connector.properties"))
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = spawn_marked(env, &mut cmd);
        ConnectWorker {
            child,
            log,
            _dir: dir,
        }
    }

    /// Whether the worker process ended.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for ConnectWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The worker's classpath: the Maven build of `benches/connect` (`make test` and `make bench` run it).
fn classpath() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/connect/target");
    assert!(
        dir.join("lib").is_dir(),
        "{} is missing: build it with `mvn -B -q -f benches/connect/pom.xml package` (make test and make \
         bench do)",
        dir.display()
    );
    format!(
        "{}:{}/*",
        dir.join("connect-1.jar").display(),
        dir.join("lib").display()
    )
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
