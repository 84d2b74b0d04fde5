//! The Watch streams: N `presence.v1.PresenceApi/Watch` server streams
//! spread over a few HTTP/2 connections, each following its department's
//! AoRs. Per stream and AoR it keeps the newest change and version shown;
//! it counts skipped changes (the hub's coalescing), repeats, changes or
//! versions going backwards, and the change → event latency of every state
//! showing a newer change once the stream is `synced`.

use super::plan::{self, Clock};
use crate::stats::histogram;
use hdrhistogram::Histogram;
use presence_api::pb;
use presence_api::pb::presence_api_client::PresenceApiClient;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tonic::transport::Channel;

/// Largest message a stream accepts (a batch of states is one message each).
const MAX_MESSAGE: usize = 16 << 20;

/// What the streams saw, in total.
#[derive(Debug, Default, Clone, Serialize)]
pub struct WatchCounts {
    pub streams: u64,
    pub synced: u64,
    /// States before `synced` (each AoR's current one).
    pub initial_states: u64,
    /// States after `synced`.
    pub events: u64,
    /// States after `synced` showing a newer change (the latency samples).
    pub changes: u64,
    /// Changes a stream never showed because a newer one came first.
    pub coalesced: u64,
    /// States showing the change already shown.
    pub duplicates: u64,
    /// States showing an older change than one already shown.
    pub out_of_order: u64,
    /// States with a lower version than one already shown for the AoR.
    pub versions_backwards: u64,
    pub heartbeats: u64,
    /// States for an AoR the stream did not ask for.
    pub unknown_aor: u64,
    /// Streams that failed or ended before the bench closed them.
    pub errors: u64,
    pub first_error: Option<String>,
}

#[derive(Default)]
struct Counters {
    initial: AtomicU64,
    events: AtomicU64,
    changes: AtomicU64,
    coalesced: AtomicU64,
    duplicates: AtomicU64,
    out_of_order: AtomicU64,
    backwards: AtomicU64,
    heartbeats: AtomicU64,
    unknown: AtomicU64,
    errors: AtomicU64,
}

struct Ctx {
    clock: Clock,
    run: String,
    prefix: String,
    /// Latency shards (µs), one per connection, to keep locks short.
    hist: Vec<Mutex<Histogram<u64>>>,
    c: Counters,
    synced: AtomicUsize,
    closing: AtomicBool,
    first_error: Mutex<Option<String>>,
}

/// One stream: its AoRs (sorted) and, per AoR, the newest (change,
/// version) shown.
struct Stream {
    aors: Vec<u32>,
    st: Mutex<State>,
}

struct State {
    seen: Vec<(u32, u64)>,
    synced: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Streams {
    ctx: Arc<Ctx>,
    streams: Vec<Arc<Stream>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub struct WatchSetup {
    pub clock: Clock,
    pub run: String,
    pub prefix: String,
    pub domain: String,
    pub heartbeat_s: u32,
}

impl Streams {
    /// Open one stream per department, round-robin over `channels`.
    pub fn open(channels: &[Channel], departments: Vec<Vec<u32>>, s: WatchSetup) -> Streams {
        let ctx = Arc::new(Ctx {
            clock: s.clock,
            run: s.run,
            prefix: s.prefix.clone(),
            hist: channels.iter().map(|_| Mutex::new(histogram())).collect(),
            c: Counters::default(),
            synced: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            first_error: Mutex::new(None),
        });
        let mut streams = Vec::with_capacity(departments.len());
        let mut tasks = Vec::with_capacity(departments.len());
        for (i, aors) in departments.into_iter().enumerate() {
            let names: Vec<String> = aors
                .iter()
                .map(|a| plan::aor(&s.prefix, &s.domain, *a))
                .collect();
            let stream = Arc::new(Stream {
                st: Mutex::new(State {
                    seen: vec![(0, 0); aors.len()],
                    synced: false,
                }),
                aors,
            });
            streams.push(stream.clone());
            let channel = channels[i % channels.len()].clone();
            let req = pb::WatchRequest {
                aors: names,
                event: "presence".into(),
                resume: Default::default(),
                heartbeat_seconds: s.heartbeat_s,
            };
            tasks.push(tokio::spawn(follow(
                i % channels.len(),
                channel,
                req,
                stream,
                ctx.clone(),
            )));
        }
        Streams {
            ctx,
            streams,
            tasks,
        }
    }

    /// Streams that have had `synced`.
    pub fn synced(&self) -> usize {
        self.ctx.synced.load(Ordering::Relaxed)
    }

    /// Streams that failed or ended.
    pub fn errors(&self) -> u64 {
        self.ctx.c.errors.load(Ordering::Relaxed)
    }

    /// (stream, AoR) pairs whose newest change shown is older than the
    /// AoR's newest acknowledged one (`acked`, by AoR index).
    pub fn behind(&self, acked: &[u32]) -> u64 {
        let mut n = 0;
        for s in &self.streams {
            let st = lock(&s.st);
            for (a, (seq, _)) in s.aors.iter().zip(&st.seen) {
                if *seq < acked[*a as usize] {
                    n += 1;
                }
            }
        }
        n
    }

    /// (stream, AoR) pairs.
    pub fn pairs(&self) -> u64 {
        self.streams.iter().map(|s| s.aors.len() as u64).sum()
    }

    pub fn counts(&self) -> WatchCounts {
        let c = &self.ctx.c;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WatchCounts {
            streams: self.streams.len() as u64,
            synced: self.synced() as u64,
            initial_states: g(&c.initial),
            events: g(&c.events),
            changes: g(&c.changes),
            coalesced: g(&c.coalesced),
            duplicates: g(&c.duplicates),
            out_of_order: g(&c.out_of_order),
            versions_backwards: g(&c.backwards),
            heartbeats: g(&c.heartbeats),
            unknown_aor: g(&c.unknown),
            errors: g(&c.errors),
            first_error: lock(&self.ctx.first_error).clone(),
        }
    }

    /// Change → event latency, µs, all streams.
    pub fn latency(&self) -> Histogram<u64> {
        let mut h = histogram();
        for s in &self.ctx.hist {
            let _ = h.add(&*lock(s));
        }
        h
    }

    /// Start taking latency samples afresh (the churn begins).
    pub fn reset_latency(&self) {
        for s in &self.ctx.hist {
            lock(s).reset();
        }
    }

    /// Close every stream (not counted as errors).
    pub async fn close(&mut self) {
        self.ctx.closing.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Ctx {
    fn fail(&self, why: String) {
        if self.closing.load(Ordering::Relaxed) {
            return;
        }
        self.c.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = lock(&self.first_error);
        if first.is_none() {
            *first = Some(why);
        }
    }

    fn state(&self, shard: usize, stream: &Stream, s: &pb::PresenceState) {
        let now = self.clock.ns();
        let c = &self.c;
        let pos =
            plan::aor_index(&s.aor, &self.prefix).and_then(|a| stream.aors.binary_search(&a).ok());
        let Some(pos) = pos else {
            c.unknown.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let note = plan::parse_note(s.note.as_bytes(), &self.run);
        let seq = note.map_or(0, |n| n.0);
        let mut st = lock(&stream.st);
        let synced = st.synced;
        let (seen, version) = &mut st.seen[pos];
        if s.version < *version {
            c.backwards.fetch_add(1, Ordering::Relaxed);
        }
        *version = (*version).max(s.version);
        if !synced {
            c.initial.fetch_add(1, Ordering::Relaxed);
            *seen = (*seen).max(seq);
            return;
        }
        c.events.fetch_add(1, Ordering::Relaxed);
        if seq > *seen {
            c.changes.fetch_add(1, Ordering::Relaxed);
            c.coalesced
                .fetch_add(u64::from(seq - *seen - 1), Ordering::Relaxed);
            *seen = seq;
            drop(st);
            if let Some((_, t)) = note {
                let _ = lock(&self.hist[shard]).record((now.saturating_sub(t) / 1000).max(1));
            }
        } else if seq == *seen {
            c.duplicates.fetch_add(1, Ordering::Relaxed);
        } else {
            c.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One stream, until it ends or is aborted.
async fn follow(
    shard: usize,
    channel: Channel,
    req: pb::WatchRequest,
    stream: Arc<Stream>,
    ctx: Arc<Ctx>,
) {
    let mut client = PresenceApiClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
    let mut s = match client.watch(req).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            ctx.fail(format!("Watch refused: {e}"));
            return;
        }
    };
    loop {
        match s.message().await {
            Ok(Some(m)) => match m.kind {
                Some(pb::watch_response::Kind::State(st)) => ctx.state(shard, &stream, &st),
                Some(pb::watch_response::Kind::Synced(_)) => {
                    let mut st = lock(&stream.st);
                    if !st.synced {
                        st.synced = true;
                        ctx.synced.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(pb::watch_response::Kind::Heartbeat(_)) => {
                    ctx.c.heartbeats.fetch_add(1, Ordering::Relaxed);
                }
                None => {}
            },
            Ok(None) => {
                ctx.fail("a stream ended".into());
                return;
            }
            Err(e) => {
                ctx.fail(format!("a stream failed: {e}"));
                return;
            }
        }
    }
}
