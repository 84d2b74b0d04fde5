//! presence-apibench: Watch streams, GetPresence batches and SIP NOTIFY side
//! by side under PUBLISH churn (see `presence_loadtest::apibench`).
#![forbid(unsafe_code)]

use clap::Parser;
use presence_loadtest::apibench::{self, Cli};
use std::process::ExitCode;

/// Exit status: 0 passed, 1 something was lost or went backwards (or a
/// call failed), 2 bad flags or the setup failed (nothing measured).
fn main() -> ExitCode {
    let cli = Cli::parse();
    let (report_path, quiet) = (cli.report.clone(), cli.quiet);
    let report = match apibench::run(cli) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let json = match serde_json::to_string_pretty(&report) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("error: report: {e}");
            return ExitCode::from(2);
        }
    };
    print!("{}", report.table());
    if !quiet {
        println!("{json}");
    }
    let mut ok = report.passed;
    if let Some(path) = report_path {
        if let Err(e) = std::fs::write(&path, &json) {
            eprintln!("error: --report {}: {e}", path.display());
            ok = false;
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
