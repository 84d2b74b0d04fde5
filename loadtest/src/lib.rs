//! presence-loadtest: many SIP user agents at once, with a correctness canary.
//!
//! What it is: a load generator for the presence server (or any SIMPLE
//! server, e.g. Kamailio's presence modules). It registers, publishes and
//! subscribes thousands of user agents over a few shared UDP sockets or TCP
//! connections, drives an open-loop steady state (PUBLISH and MESSAGE at
//! fixed rates, refreshes on their timers), and checks that every watcher
//! ends up with the latest document, in order, without duplicates, and that
//! every MESSAGE arrives. It reports rates, HDR latency percentiles and its
//! own CPU cost per message.
//!
//! What it is not: a SIP stack. It scans only the headers it needs
//! ([`scan`]) and formats its requests itself; one thread runs everything
//! ([`engine`]), so it costs little CPU per message.
//!
//! [`apibench`] (binary `presence-apibench`) is the other tool here: the
//! gRPC presence API (Watch, GetPresence) under SIP PUBLISH churn, with SIP
//! NOTIFY on the same changes as its baseline.
#![forbid(unsafe_code)]

pub mod apibench;
pub mod canary;
pub mod config;
pub mod digest;
pub mod engine;
pub mod net;
pub mod plot;
pub mod rng;
pub mod scan;
pub mod stats;
