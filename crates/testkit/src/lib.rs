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
