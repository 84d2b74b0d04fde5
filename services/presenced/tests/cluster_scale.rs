//! `make cluster-scale` (loadtest/cluster-scale.py) in its smallest form:
//! one compositor on a simulated host of its own (network namespace, cgroup
//! CPU quota), the rest of the cluster, Redis, NATS and the load generator
//! on theirs, a few seconds of PUBLISHes. The row must show PUBLISHes
//! delivered with a clean canary, and the script must leave no namespace,
//! cgroup or process behind. Needs root (CI runs as root); without it the
//! test says so and does nothing.

mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn leftovers() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let mut left: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("psc-"))
        .map(String::from)
        .collect();
    if Path::new("/sys/fs/cgroup/cpu/presence-scale").exists() {
        left.push("cgroup presence-scale".into());
    }
    left
}

#[test]
fn the_scaling_bench_runs_and_cleans_up() {
    let root = Command::new("id").arg("-u").output().expect("id -u");
    if String::from_utf8_lossy(&root.stdout).trim() != "0" {
        eprintln!("SKIPPED: cluster-scale needs root (network namespaces, cgroups)");
        return;
    }
    let loadtest = harness::loadtest_binary();
    let bin = loadtest.parent().expect("binary directory").to_path_buf();
    assert!(
        bin.join("presenced").exists(),
        "no presenced next to {loadtest:?}"
    );
    let out = std::env::temp_dir().join(format!("presence-cluster-scale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new("python3")
        .current_dir(repo())
        .arg("loadtest/cluster-scale.py")
        .args(["--tiers", "compositor", "--counts", "1", "--duration", "4"])
        .args(["--users", "20", "--quota", "0.5", "--doc", "-"])
        .arg("--bin")
        .arg(&bin)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "cluster-scale failed:\n{text}");
    assert!(leftovers().is_empty(), "left behind: {:?}", leftovers());
    let rows = std::fs::read_to_string(out.join("rows.json")).expect("rows.json");
    let throughput: f64 = rows
        .split("\"throughput\":")
        .nth(1)
        .and_then(|r| r.split([',', '\n']).next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no throughput in {rows}"));
    assert!(throughput > 0.0, "no PUBLISH delivered:\n{text}");
    assert!(
        rows.contains("\"passed\": true"),
        "the canary was not clean:\n{rows}\n{text}"
    );
    assert!(
        text.contains("| compositor | 1 |"),
        "no table row printed:\n{text}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
