//! Sans-I/O presence logic shared by every role.
//!
//! What it is: the domain model (publications, bindings, subscriptions,
//! documents, flows), canonical AoRs and their shard, event packages as a
//! registry of trait objects, PIDF parsing and composition, watcher
//! authorisation policy, Digest authentication (RFC 2617 / RFC 8760) with
//! stateless nonces, and the seals of flows. Functions take values and
//! return values.
//!
//! What it is not: no sockets, no storage, no clock reads (time is passed in
//! as unix milliseconds), no async.
#![forbid(unsafe_code)]

pub mod aor;
pub mod apiauth;
pub mod commands;
pub mod dialog;
pub mod digest;
pub mod directory;
pub mod model;
pub mod mwi;
pub mod packages;
pub mod pidf;
pub mod policy;
pub mod reginfo;
pub mod rlmi;
pub mod seal;
pub mod summary;
pub mod winfo;

pub use aor::{canonical_aor, shard_in_id, shard_of, subscription_id, Aor};
pub use model::*;
pub use seal::{FlowSealer, Seal};
