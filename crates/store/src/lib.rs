//! Storage and bus: the traits every role programs against, their in-memory
//! implementations (embedded mode and unit tests), and the contract suites
//! that every implementation — in-memory now, Redis and NATS later — must pass.
//!
//! What it is not: no SIP, no composition. Call sites never branch on the
//! backend; they hold an `Arc<dyn Store>` and the bus traits.
#![forbid(unsafe_code)]

pub mod bus;
pub mod contract;
pub mod gather;
pub mod lease;
pub mod memory;
pub mod store;

pub use bus::{
    BusError, Delivery, Incoming, MemoryBus, MemoryQueue, MemoryTopics, Replier, Requests, Settle,
    Topics, WorkQueue, TOPIC_BACKLOG,
};
pub use lease::{Lease, Leases};
pub use memory::MemoryStore;
pub use store::{Counts, ExpiryKey, Op, Store, StoreError, StoreResult};
