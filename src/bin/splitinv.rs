//! The `splitinv` command line.

use clap::{Parser, Subcommand};
use splitinv::bench;
use splitinv::cpu::{simd, threads};
use splitinv::{Error, Result};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "splitinv",
    version,
    about = "Model inversion attacks against split (collaborative) inference"
)]
struct Cli {
    /// Worker threads for the CPU kernels (default: $SPLITINV_THREADS, else all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The whole story on synthetic digits, no files needed: train LeNet
    /// briefly, run all three attacks at two split layers, print the table
    /// and write PNG grids.
    Demo {
        /// Output folder.
        #[arg(long, default_value = "results/demo")]
        out: std::path::PathBuf,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Print the CPU's SIMD level, the thread count and the CUDA status.
    Info,
    /// Time the standard workloads (training steps and white-box attack steps).
    Bench {
        /// One JSON object per line: {"workload", "s_per_step", ...}.
        #[arg(long)]
        json: bool,
        /// Shorter timing (a few steps per workload).
        #[arg(long)]
        quick: bool,
        /// Only workloads whose name contains this text.
        #[arg(long)]
        filter: Option<String>,
    },
}

fn run(cli: Cli) -> Result<()> {
    threads::init(cli.threads)?;
    match cli.cmd {
        Cmd::Demo { out, seed } => splitinv::demo::run(&out, seed).map(|_| ()),
        Cmd::Info => {
            println!("splitinv {}", env!("CARGO_PKG_VERSION"));
            let levels: Vec<String> = simd::available_levels()
                .iter()
                .map(|l| l.to_string())
                .collect();
            println!(
                "cpu simd: {} (available: {})",
                simd::level(),
                levels.join(", ")
            );
            println!("threads:  {}", threads::num_threads());
            Ok(())
        }
        Cmd::Bench {
            json,
            quick,
            filter,
        } => {
            let workloads: Vec<_> = bench::standard_workloads()
                .into_iter()
                .filter(|w| filter.as_deref().is_none_or(|f| w.name.contains(f)))
                .collect();
            if workloads.is_empty() {
                return Err(Error::invalid(
                    "bench",
                    format!(
                        "no workload matches --filter {:?}",
                        filter.unwrap_or_default()
                    ),
                ));
            }
            if !json {
                println!(
                    "{:<28} {:>12} {:>12} {:>7}",
                    "workload", "ms/step", "images/s", "steps"
                );
            }
            for w in &workloads {
                let r = bench::run(w, quick)?;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string(&r).map_err(|e| Error::Msg(e.to_string()))?
                    );
                } else {
                    println!(
                        "{:<28} {:>12.4} {:>12.1} {:>7}",
                        r.workload,
                        r.s_per_step * 1e3,
                        r.images_per_s,
                        r.steps
                    );
                }
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
