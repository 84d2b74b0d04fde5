//! GetPresence throughput: C callers, each sending one batch of B AoRs
//! (a contiguous page of the directory from a random start) after the
//! other for a fixed time. Every answer is checked: one state per AoR
//! asked, in order, each showing at least the AoR's newest acknowledged
//! change (the churn is over, so anything older is stale).

use super::plan;
use crate::rng::Rng;
use crate::stats::{histogram, Percentiles};
use presence_api::pb;
use presence_api::pb::presence_api_client::PresenceApiClient;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

pub struct GetSetup {
    pub callers: usize,
    pub batch: usize,
    pub duration: Duration,
    pub prefix: String,
    pub domain: String,
    pub run: String,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GetReport {
    pub callers: usize,
    pub batch: usize,
    pub duration_s: f64,
    pub calls: u64,
    pub aors: u64,
    pub calls_per_s: f64,
    pub aors_per_s: f64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Answers without one state per AoR asked, in order.
    pub wrong_answers: u64,
    /// States older than the AoR's newest acknowledged change.
    pub stale: u64,
    /// Call latency (send → whole answer).
    pub latency: Percentiles,
}

#[derive(Default)]
struct Caller {
    calls: u64,
    aors: u64,
    errors: u64,
    first_error: Option<String>,
    wrong: u64,
    stale: u64,
}

/// Run the callers; `acked` is the newest acknowledged change per AoR.
pub async fn run(channels: &[Channel], s: GetSetup, acked: Arc<Vec<u32>>) -> GetReport {
    let m = acked.len() as u64;
    let names: Arc<Vec<String>> = Arc::new(
        (0..m as u32)
            .map(|i| plan::aor(&s.prefix, &s.domain, i))
            .collect(),
    );
    let start = Instant::now();
    let deadline = start + s.duration;
    let mut tasks = Vec::new();
    for c in 0..s.callers.max(1) {
        let mut client = PresenceApiClient::new(channels[c % channels.len()].clone())
            .max_decoding_message_size(64 << 20);
        let names = names.clone();
        let acked = acked.clone();
        let (batch, run, prefix) = (s.batch.min(m as usize), s.run.clone(), s.prefix.clone());
        let mut rng = Rng::new(s.seed ^ (c as u64 + 1).wrapping_mul(0x9E37_79B9));
        tasks.push(tokio::spawn(async move {
            let mut me = Caller::default();
            let mut h = histogram();
            while Instant::now() < deadline {
                let first = rng.below(m);
                let idx: Vec<u32> = (0..batch as u64)
                    .map(|k| ((first + k) % m) as u32)
                    .collect();
                let req = pb::GetPresenceRequest {
                    aors: idx.iter().map(|i| names[*i as usize].clone()).collect(),
                    event: String::new(),
                };
                let t = Instant::now();
                let r = client.get_presence(req).await;
                let _ = h.record((t.elapsed().as_micros() as u64).max(1));
                match r {
                    Ok(r) => {
                        let states = r.into_inner().states;
                        me.calls += 1;
                        me.aors += states.len() as u64;
                        let in_order = states.len() == idx.len()
                            && states
                                .iter()
                                .zip(&idx)
                                .all(|(st, i)| plan::aor_index(&st.aor, &prefix) == Some(*i));
                        if !in_order {
                            me.wrong += 1;
                            continue;
                        }
                        for (st, i) in states.iter().zip(&idx) {
                            let seq = plan::parse_note(st.note.as_bytes(), &run).map_or(0, |n| n.0);
                            if seq < acked[*i as usize] {
                                me.stale += 1;
                            }
                        }
                    }
                    Err(e) => {
                        me.errors += 1;
                        if me.first_error.is_none() {
                            me.first_error = Some(e.to_string());
                        }
                    }
                }
            }
            (me, h)
        }));
    }
    let mut total = Caller::default();
    let mut h = histogram();
    for t in tasks {
        if let Ok((me, mh)) = t.await {
            total.calls += me.calls;
            total.aors += me.aors;
            total.errors += me.errors;
            total.wrong += me.wrong;
            total.stale += me.stale;
            total.first_error = total.first_error.or(me.first_error);
            let _ = h.add(&mh);
        }
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    GetReport {
        callers: s.callers.max(1),
        batch: s.batch.min(m as usize),
        duration_s: secs,
        calls: total.calls,
        aors: total.aors,
        calls_per_s: total.calls as f64 / secs,
        aors_per_s: total.aors as f64 / secs,
        errors: total.errors,
        first_error: total.first_error,
        wrong_answers: total.wrong,
        stale: total.stale,
        latency: Percentiles::of(&h),
    }
}
