//! NATS as the bus (cluster mode).
#![forbid(unsafe_code)]
