//! The `sluice` binary: the command line only. It runs the operator, a task or a replay, prints the CRDs or
//! the API reference, and maps how a process ended to its exit status in one place ([`end`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::wire::termination::{self, TerminationMessage, TerminationReason};
use sluice::wire::{ReplayConfig, TaskConfig};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "MongoDB ⇄ Kafka connectors on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator: reconcile Connectors and DeadLetterQueues.
    Operator(OperatorArgs),
    /// Print the CustomResourceDefinitions (or write one file per CRD into --out-dir).
    Crdgen {
        /// Write `<crd name>.yaml` files into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Print the API reference generated from the CRD schemas (or write it to --out).
    Docgen {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run one connector task from the config file the operator rendered.
    Task {
        /// The task's config file.
        #[arg(long, env = "SLUICE_TASK_CONFIG")]
        config: PathBuf,
    },
    /// Print a Kafka Connect MongoDB connector's config as a Connector manifest, with what could not be
    /// mapped. Input: Connect's REST JSON (`GET /connectors/<name>`), its bare config map, or a Strimzi
    /// KafkaConnector (YAML or JSON).
    Convert {
        /// The file to read; `-` reads standard input.
        file: PathBuf,
        /// Kafka's bootstrap servers (a Connect worker setting, so not in connector configs).
        #[arg(long)]
        bootstrap_servers: Option<String>,
    },
    /// DeadLetterQueues at a terminal.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Rotate a source Connector's offset partition name now (the `sluice.dev/rotate-offsets` annotation).
    Rotate {
        connector: String,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Delete a stopped Connector's offsets (the `sluice.dev/reset-offsets` annotation; it waits while the
    /// Connector runs).
    ResetOffsets {
        connector: String,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Restart a Connector's tasks (all, or `--task N`) by deleting their pods.
    Restart {
        connector: String,
        #[arg(long)]
        task: Option<u32>,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Replay dead-letter records (what a DeadLetterQueue's replay pod runs).
    Replay {
        /// The replay's config as JSON, as the operator renders it.
        #[arg(long, env = "SLUICE_REPLAY_CONFIG")]
        config: String,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Print the last records of a DeadLetterQueue with their error context (record contents only with
    /// --include-records).
    Peek(PeekArgs),
}

#[derive(clap::Args)]
struct PeekArgs {
    /// The DeadLetterQueue.
    dlq: String,
    #[arg(short, long)]
    namespace: Option<String>,
    /// How many records, the newest last.
    #[arg(long, default_value_t = 10)]
    last: usize,
    /// How many of the newest records of each partition to search with filters.
    #[arg(long, default_value_t = 10_000)]
    scan: i64,
    /// Only these error classes (repeat the flag for more).
    #[arg(long = "error-class")]
    error_classes: Vec<String>,
    /// Only records from these original topics.
    #[arg(long = "original-topic")]
    original_topics: Vec<String>,
    /// Only records of these Connectors.
    #[arg(long = "connector")]
    connectors: Vec<String>,
    /// Only records dead-lettered at or after this time (RFC 3339).
    #[arg(long)]
    from: Option<String>,
    /// Only records dead-lettered before this time (RFC 3339).
    #[arg(long)]
    to: Option<String>,
    /// Show keys, values and the server's messages whole: record contents, which may be personal data.
    #[arg(long)]
    include_records: bool,
    /// `text` or `json`.
    #[arg(short, long, default_value = "text")]
    output: String,
}

#[derive(clap::Args)]
struct OperatorArgs {
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[arg(long, env = "SLUICE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: std::net::SocketAddr,
    /// Image of task pods unless a Connector's template names one.
    #[arg(long, env = "SLUICE_TASK_IMAGE", default_value = concat!("ghcr.io/sluice-dev/sluice:", env!("CARGO_PKG_VERSION")))]
    task_image: String,
    /// ServiceAccount of task and replay pods unless a Connector's template names one (the chart makes one
    /// with no API rights).
    #[arg(long, env = "SLUICE_TASK_SERVICE_ACCOUNT")]
    task_service_account: Option<String>,
    /// Watch only this namespace (namespaced mode); all namespaces when absent.
    #[arg(long, env = "SLUICE_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Elect a leader through a Lease so several replicas are safe.
    #[arg(long, env = "SLUICE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the leader Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How often every running task's `/v1/status` is read into its Connector's status (`10s`, `1m`).
    #[arg(long, env = "SLUICE_TASK_STATUS_INTERVAL", default_value = "10s", value_parser = duration)]
    task_status_interval: std::time::Duration,
    /// How many tasks are read at once.
    #[arg(long, env = "SLUICE_TASK_STATUS_CONCURRENCY", default_value_t = 16)]
    task_status_concurrency: usize,
    /// A Connector is Degraded (reason RecordErrors) while its record errors rose within this window.
    #[arg(long, env = "SLUICE_RECORD_ERRORS_WINDOW", default_value = "5m", value_parser = duration)]
    record_errors_window: std::time::Duration,
    /// How often each DeadLetterQueue's topic is inspected again (depth, new records).
    #[arg(long, env = "SLUICE_DEAD_LETTER_REFRESH", default_value = "30s", value_parser = duration)]
    dead_letter_refresh: std::time::Duration,
}

/// A duration like `10s`, `5m`, `1h`, `500ms`.
fn duration(s: &str) -> Result<std::time::Duration, String> {
    sluice::duration::parse(s)
        .ok_or_else(|| format!("{s:?} is not a duration above 0 like 10s, 5m or 500ms"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Operator(args) => run_operator(args),
        Command::Task { config } => run_task(&config),
        Command::Crdgen { out_dir } => crdgen(out_dir.as_deref()),
        Command::Replay { config } => run_replay(&config),
        Command::Dlq {
            command: DlqCommand::Peek(args),
        } => peek(args),
        Command::Rotate {
            connector,
            namespace,
        } => at_terminal(sluice::kubectl::rotate(namespace.as_deref(), &connector)),
        Command::ResetOffsets {
            connector,
            namespace,
        } => at_terminal(sluice::kubectl::reset_offsets(
            namespace.as_deref(),
            &connector,
        )),
        Command::Restart {
            connector,
            task,
            namespace,
        } => at_terminal(sluice::kubectl::restart(
            namespace.as_deref(),
            &connector,
            task,
        )),
        Command::Convert {
            file,
            bootstrap_servers,
        } => convert(&file, bootstrap_servers),
        Command::Docgen { out } => match out {
            None => {
                print!("{}", sluice::docs::reference());
                ExitCode::SUCCESS
            }
            Some(path) => match std::fs::write(&path, sluice::docs::reference()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => fail(
                    TerminationReason::WriteFailed,
                    &format!("{}: {err}", path.display()),
                ),
            },
        },
    }
}

/// A terminal command that could not do what it was asked: why, on stderr, and exit status 1 (no
/// termination message: it runs in no pod).
fn refuse(why: &str) -> ExitCode {
    eprintln!("sluice: {why}");
    ExitCode::FAILURE
}

/// Runs a terminal command on a small runtime: its message on stdout, or its error on stderr.
fn at_terminal(command: impl std::future::Future<Output = Result<String, String>>) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(command) {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(why) => refuse(&why),
    }
}

fn peek(args: PeekArgs) -> ExitCode {
    if args.output != "text" && args.output != "json" {
        return refuse(&format!("--output {}: text or json", args.output));
    }
    let json = args.output == "json";
    let request = sluice::kubectl::Peek {
        namespace: args.namespace,
        dlq: args.dlq,
        last: args.last,
        scan: args.scan,
        filter: sluice::crd::dead_letter_queue::ReplayFilter {
            error_classes: args.error_classes,
            original_topics: args.original_topics,
            connectors: args.connectors,
            from: args.from,
            to: args.to,
        },
        include_records: args.include_records,
    };
    at_terminal(async move {
        let records = sluice::kubectl::peek(&request).await?;
        Ok(if json {
            serde_json::to_string_pretty(&records).map_err(|e| e.to_string())?
        } else {
            sluice::kubectl::render_text(&records)
                .trim_end()
                .to_string()
        })
    })
}

fn convert(file: &std::path::Path, bootstrap_servers: Option<String>) -> ExitCode {
    let read = if file == std::path::Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    };
    let input = match read {
        Ok(text) => text,
        Err(err) => {
            return refuse(&format!("{}: {err}", file.display()));
        }
    };
    let options = sluice::convert::Options { bootstrap_servers };
    match sluice::convert::convert(&input, &options) {
        Ok(converted) => {
            print!("{}", sluice::convert::render(&converted));
            ExitCode::SUCCESS
        }
        Err(why) => refuse(&format!("{}: {why}", file.display())),
    }
}

fn crdgen(out_dir: Option<&std::path::Path>) -> ExitCode {
    for (file, crd) in sluice::crd::crds() {
        let yaml = match sluice::crd::to_yaml(&crd) {
            Ok(yaml) => yaml,
            Err(err) => return fail(TerminationReason::CrdInvalid, &format!("{file}: {err}")),
        };
        match out_dir {
            Some(dir) => {
                if let Err(err) = std::fs::write(dir.join(&file), yaml) {
                    return fail(
                        TerminationReason::WriteFailed,
                        &format!("{}: {err}", dir.join(&file).display()),
                    );
                }
            }
            None => print!("---\n{yaml}"),
        }
    }
    ExitCode::SUCCESS
}

fn run_operator(args: OperatorArgs) -> ExitCode {
    let runtime = match start("info,kube=warn,rdkafka=warn") {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let client = match kube::Client::try_default().await {
            Ok(c) => c,
            Err(err) => return fail(TerminationReason::KubeConfigInvalid, &format!("connecting to Kubernetes: {err}")),
        };
        let metrics = std::sync::Arc::new(sluice::controller::metrics::Metrics::default());
        let server = tokio::spawn(sluice::controller::metrics::serve(args.metrics_addr, metrics.clone()));
        let mut config = sluice::controller::OperatorConfig {
            task_status_interval: args.task_status_interval,
            task_status_concurrency: args.task_status_concurrency,
            record_errors_window: args.record_errors_window,
            dead_letter_refresh: args.dead_letter_refresh,
            ..sluice::controller::OperatorConfig::new(args.task_image, args.watch_namespace)
        };
        config.pods.service_account = args.task_service_account;
        use sluice::controller::leader;
        let lease = "sluice-operator";
        let identity = args.identity.unwrap_or_else(|| format!("sluice-{}", std::process::id()));
        let timing = leader::Timing::default();
        // Serving and reaching for the Lease is ready: a standby replica is healthy (leadership is not
        // readiness; `sluice_operator_leader` tells which replica leads).
        metrics.set_ready(true);
        if args.leader_election {
            tokio::select! {
                _ = leader::acquire(&client, &args.lease_namespace, lease, &identity, timing) => {}
                _ = stop_signal() => return ExitCode::SUCCESS,
            }
        }
        metrics.set_leader(true);
        tracing::info!(version = env!("CARGO_PKG_VERSION"), namespace = ?config.namespace, "operator running");
        let controllers = sluice::controller::run(client.clone(), config, metrics.clone());
        let outcome = if args.leader_election {
            tokio::select! {
                _ = controllers => None,
                lost = leader::keep(&client, &args.lease_namespace, lease, &identity, timing) => Some(lost),
            }
        } else {
            controllers.await;
            None
        };
        metrics.set_leader(false);
        if args.leader_election && outcome.is_none() {
            // A clean stop (SIGTERM of a rolling update): hand the Lease over now.
            leader::release(&client, &args.lease_namespace, lease, &identity).await;
        }
        server.abort();
        match outcome {
            Some(lost) => fail(TerminationReason::LeaderLost, &lost.to_string()),
            None => {
                tracing::info!("operator stopped");
                ExitCode::SUCCESS
            }
        }
    })
}

/// SIGTERM (what Kubernetes sends) or SIGINT.
async fn stop_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn run_task(path: &std::path::Path) -> ExitCode {
    let runtime = match start("info,rdkafka=warn") {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let config = match TaskConfig::load(path) {
        Ok(config) => config,
        Err(err) => return fail(TerminationReason::ConfigInvalid, &err.to_string()),
    };
    runtime.block_on(async move {
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            stop_signal().await;
            tracing::info!("stopping: finishing the batch in flight");
            let _ = stop.send(true);
        });
        let metrics = std::sync::Arc::new(sluice::task::metrics::TaskMetrics::new(
            &config.namespace,
            &config.connector,
            config.task_id,
        ));
        match sluice::task::run_with_metrics(config, shutdown, metrics.clone()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                let mut message = err.termination_message();
                let report = metrics.report();
                message.counters = Some(report.errors);
                message.partitions = report.partitions;
                end(&message, &err.to_string())
            }
        }
    })
}

fn run_replay(config: &str) -> ExitCode {
    let runtime = match start("info,rdkafka=warn") {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let config: ReplayConfig = match serde_json::from_str(config) {
        Ok(c) => c,
        Err(err) => {
            return fail(
                TerminationReason::ConfigInvalid,
                &format!("replay config: {err}"),
            );
        }
    };
    let id = config.replay.id.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    runtime.spawn(async move {
        stop_signal().await;
        tracing::info!("stopping: committing the batch in flight");
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    // librdkafka's transactional calls block: run the replay on a blocking thread.
    let done = runtime.block_on(runtime.spawn_blocking(move || sluice::replay::run(config, stop)));
    let (result, counts) = match done {
        Ok(r) => r,
        Err(err) => return fail(TerminationReason::ReplayPanicked, &err.to_string()),
    };
    match result {
        Ok(counts) => {
            tracing::info!(replay = %id, ?counts, "replay completed");
            let mut message = TerminationMessage::new(
                TerminationReason::ReplayCompleted,
                format!("replay {id} completed"),
            );
            message.replay = Some(counts);
            end(&message, &message.message)
        }
        Err(err) => end(
            &err.termination_message(counts),
            &format!("replay {id}: {err}"),
        ),
    }
}

/// JSON logs (`RUST_LOG` overrides `default_filter`) and the async runtime, or the exit code if the runtime
/// can't start.
fn start(default_filter: &str) -> Result<tokio::runtime::Runtime, ExitCode> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .init();
    tokio::runtime::Runtime::new().map_err(|err| {
        fail(
            TerminationReason::RuntimeFailed,
            &format!("starting the async runtime: {err}"),
        )
    })
}

/// Reports why the process ends on stderr and in the termination message, and returns the exit code.
fn fail(reason: TerminationReason, message: &str) -> ExitCode {
    end(&TerminationMessage::new(reason, message), message)
}

/// How every process ends that has something to say: the termination message for the operator, a line on
/// stderr (unless it completed), and the exit status of its reason ([`TerminationReason::exit_code`]).
fn end(message: &TerminationMessage, said: &str) -> ExitCode {
    let code = message.reason.exit_code();
    if code != 0 {
        eprintln!("sluice: {said}");
    }
    message.write_to(&termination::path_from_env());
    ExitCode::from(code)
}
