//! The `sluice` binary: the operator, and the task runtime its pods run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::task::TaskConfig;
use sluice::termination::{self, TerminationMessage};

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
    /// Print the CustomResourceDefinitions (or write one file per CRD into --out-dir).
    Crdgen {
        /// Write `<crd name>.yaml` files into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Run one connector task from the config file the operator rendered.
    Task {
        /// The task's config file.
        #[arg(long, env = "SLUICE_TASK_CONFIG")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Task { config } => run_task(&config),
        Command::Crdgen { out_dir } => crdgen(out_dir.as_deref()),
    }
}

fn crdgen(out_dir: Option<&std::path::Path>) -> ExitCode {
    for (file, crd) in sluice::crd::crds() {
        let yaml = match sluice::crd::to_yaml(&crd) {
            Ok(yaml) => yaml,
            Err(err) => return fail("CrdInvalid", &format!("{file}: {err}"), 1),
        };
        match out_dir {
            Some(dir) => {
                if let Err(err) = std::fs::write(dir.join(&file), yaml) {
                    return fail(
                        "WriteFailed",
                        &format!("{}: {err}", dir.join(&file).display()),
                        1,
                    );
                }
            }
            None => print!("---\n{yaml}"),
        }
    }
    ExitCode::SUCCESS
}

fn run_task(path: &std::path::Path) -> ExitCode {
    let config = match TaskConfig::load(path) {
        Ok(config) => config,
        Err(err) => return fail("ConfigInvalid", &err.to_string(), 2),
    };
    fail(
        "Unsupported",
        &format!(
            "sluice {} checks task configs but has no {:?} runtime yet",
            env!("CARGO_PKG_VERSION"),
            config.connector_type
        ),
        3,
    )
}

/// Reports why the process ends on stderr and in the termination message, and returns the exit code.
fn fail(reason: &str, message: &str, code: u8) -> ExitCode {
    eprintln!("sluice: {message}");
    TerminationMessage::new(reason, message).write_to(&termination::path_from_env());
    ExitCode::from(code)
}
