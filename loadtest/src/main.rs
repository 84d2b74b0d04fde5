//! presence-loadtest: many SIP user agents at once, with a correctness canary.
#![forbid(unsafe_code)]

use clap::Parser;
use presence_loadtest::config::{Cli, Settings};
use presence_loadtest::{net, plot, stats};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let s = match Settings::resolve(cli) {
        Ok(s) => s,
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            return ExitCode::from(2);
        }
    };
    if let Some(path) = &s.write_users {
        if let Err(e) = std::fs::write(path, s.users_file()) {
            eprintln!("error: --write-users {}: {e}", path.display());
            return ExitCode::from(2);
        }
        eprintln!("wrote {} users to {}", s.users, path.display());
        if s.target.is_none() {
            return ExitCode::SUCCESS;
        }
    }
    let cpu_base = stats::cpu_times();
    let report = match net::run(s.clone(), cpu_base) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    print!("{}", report.table());
    let mut ok = report.passed;
    if let Some(path) = &s.report {
        let json = match serde_json::to_string_pretty(&report) {
            Ok(j) => j,
            Err(e) => {
                eprintln!("error: report: {e}");
                return ExitCode::from(2);
            }
        };
        if let Err(e) = std::fs::write(path, json) {
            eprintln!("error: --report {}: {e}", path.display());
            ok = false;
        }
    }
    if let Some(path) = &s.plot {
        if let Err(e) = std::fs::write(path, plot::svg(&report)) {
            eprintln!("error: --plot {}: {e}", path.display());
            ok = false;
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
