//! The vocabulary the roles share: bus subject names, how long an edge may
//! be unreachable before it counts as gone, id formats, defaults. A leaf
//! module: it imports no role, so no role imports another for a name.

use std::time::Duration;

/// The subject a shard's owner serves: `shard.<k>`.
pub fn shard_subject(shard: u32) -> String {
    format!("shard.{shard}")
}

/// The subject on which shard `k`'s owner announces each committed
/// document change: `changes.<k>` (see [`change_hint`]).
pub fn changes_subject(shard: u32) -> String {
    format!("changes.{shard}")
}

/// A change announcement: `<event> <aor>` (an AoR has no space). Only a
/// hint: whoever reads it reads the document from the store.
pub fn change_hint(event: &str, aor: &str) -> String {
    format!("{event} {aor}")
}

/// The (event, aor) of a [`change_hint`].
pub fn parse_change_hint(hint: &[u8]) -> Option<(&str, &str)> {
    std::str::from_utf8(hint).ok()?.split_once(' ')
}

/// The subject a compositor serves for every shard it owns, so that an
/// edge can send the requests for several of them as one message
/// (`Requests::request_via`): `owner.<id>`, from the owner name of its
/// shard leases, with anything but letters, digits, `-` and `_` as `_`.
pub fn owner_subject(owner: &str) -> String {
    let id: String = owner
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("owner.{id}")
}

/// The shard of a `shard.<k>` subject.
pub fn shard_of_subject(subject: &str) -> Option<u32> {
    subject.strip_prefix("shard.")?.parse().ok()
}

/// The subject an edge serves for the NOTIFYs and MESSAGEs of its flows.
pub fn edge_subject(edge: &str) -> String {
    format!("edge.{edge}")
}

/// Served by every edge (one of them takes each request): the way to a
/// watcher whose own edge is gone. Any edge can send to a UDP watcher (from
/// its own socket) or open a new TCP connection to it.
pub const ANY_EDGE: &str = "edges.any";

/// How long nobody may serve an edge's subject before the edge is taken for
/// gone (and [`ANY_EDGE`] used): longer than a NATS reconnection leaves a
/// live edge's subscription missing.
pub const EDGE_GONE_AFTER: Duration = Duration::from_secs(4);

/// Default of `--notify-batch`: NOTIFYs of one change a notifier sends
/// itself before sharing the rest with other notifiers.
pub const DEFAULT_BATCH: usize = 500;

/// An unguessable entity-tag (128 random bits).
pub fn new_etag() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The ETag a PUBLISH transaction gives its publication: a hash of the
/// transaction's key and `seed` (the ETag it replaces; the AoR and event of
/// an initial PUBLISH), the same in every process. A PUBLISH whose first
/// attempt was committed by a shard owner that died before answering is
/// sent again to the new owner, which finds the publication this very
/// transaction made and answers with it, instead of 412 (its If-Match ETag
/// is gone) or a second publication. Random when there is no transaction
/// key.
pub fn txn_etag(seed: &str, txn: &str) -> String {
    use sha2::Digest;
    if txn.is_empty() {
        return new_etag();
    }
    let mut h = sha2::Sha256::new();
    h.update(b"presence etag\0");
    h.update(seed.as_bytes());
    h.update(b"\0");
    h.update(txn.as_bytes());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A dialog tag or subscription id (64 random bits).
pub fn new_tag() -> String {
    format!("{:016x}", rand::random::<u64>())
}
