//! presence-loadtest: many SIP user agents at once, with a correctness canary.
#![forbid(unsafe_code)]

fn main() {}
