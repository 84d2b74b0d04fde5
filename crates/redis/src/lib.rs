//! Redis as the system of record (cluster mode).
#![forbid(unsafe_code)]
