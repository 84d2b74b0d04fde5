//! Test harness for the cluster backends: real `redis-server` (standalone and a
//! 3-master Redis Cluster) and `nats-server` (with JetStream) processes, each on
//! free ports in its own temporary directory, killed when the handle drops.
//!
//! What it is not: a mock. Tests that need a backend start the real binary; a
//! missing binary is a test failure with a message that says how to install it.
#![forbid(unsafe_code)]

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

pub mod nats;
pub mod redis;

/// CPU seconds (user + system) used so far by process `root` and every
/// process below it, from `/proc` (Linux; `None` elsewhere or once `root`
/// is gone). Clock ticks are taken as 100 per second, Linux's USER_HZ.
pub fn process_tree_cpu_seconds(root: u32) -> Option<f64> {
    // pid → (parent, ticks) of every process we may read.
    let mut procs = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command may contain spaces and parentheses: fields start
        // after the last ')'. Then: state ppid … utime (14) stime (15).
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let (Some(ppid), Some(u), Some(s)) = (
            f.get(1).and_then(|x| x.parse::<u32>().ok()),
            f.get(11).and_then(|x| x.parse::<u64>().ok()),
            f.get(12).and_then(|x| x.parse::<u64>().ok()),
        ) else {
            continue;
        };
        procs.push((pid, ppid, u + s));
    }
    if !procs.iter().any(|p| p.0 == root) {
        return None;
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(procs.iter().filter(|p| p.1 == parent).map(|p| p.0));
        i += 1;
    }
    let ticks: u64 = procs
        .iter()
        .filter(|p| tree.contains(&p.0))
        .map(|p| p.2)
        .sum();
    Some(ticks as f64 / 100.0)
}
