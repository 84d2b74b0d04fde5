//! NOTIFYs owed without a change: RFC 6446 `min-rate` and
//! `adaptive-min-rate` timing, per subscription, in the notifier process
//! that sent the subscription's last NOTIFY.

use std::collections::HashMap;

/// NOTIFYs owed without a change (RFC 6446 `min-rate`,
/// `adaptive-min-rate`) to the subscriptions this notifier sent to last.
/// In a cluster another notifier may send a subscription's next NOTIFY;
/// then it takes over the timing, and this one's entry lapses.
#[derive(Default)]
pub(super) struct Heartbeats {
    /// Subscription → when its next NOTIFY is owed.
    due: HashMap<String, tokio::time::Instant>,
    queue: std::collections::BinaryHeap<std::cmp::Reverse<(tokio::time::Instant, String)>>,
    /// Subscription → when it was first seen, and its NOTIFYs' times in
    /// the adaptive period (adaptive-min-rate's `count`).
    sent: HashMap<
        String,
        (
            tokio::time::Instant,
            std::collections::VecDeque<tokio::time::Instant>,
        ),
    >,
}

/// NOTIFY times remembered per subscription at most (adaptive-min-rate).
const HEARTBEAT_HISTORY: usize = 1_000;

impl Heartbeats {
    /// A NOTIFY of `id` went out at `now`: when is the next one owed?
    pub(super) fn sent(
        &mut self,
        id: &str,
        rates: presence_core::Rates,
        now: tokio::time::Instant,
    ) {
        if !rates.has_heartbeat() {
            self.forget(id);
            return;
        }
        let period = rates.adaptive_period();
        let (first, times) = self
            .sent
            .entry(id.to_string())
            .or_insert_with(|| (now, Default::default()));
        times.push_back(now);
        while times.len() > HEARTBEAT_HISTORY
            || times
                .front()
                .is_some_and(|t| now.duration_since(*t) > period)
        {
            times.pop_front();
        }
        // A new subscription starts with a history of period × rate
        // NOTIFYs (RFC 6446 §7.2), which fades out over its first period.
        let fading = 1.0 - now.duration_since(*first).as_secs_f64() / period.as_secs_f64();
        let history = period.as_secs_f64() * rates.adaptive_min as f64 / 1000.0 * fading.max(0.0);
        let Some(after) = rates.heartbeat_after(times.len() as f64 + history) else {
            return;
        };
        let at = now + after;
        self.due.insert(id.to_string(), at);
        self.queue.push(std::cmp::Reverse((at, id.to_string())));
        if self.queue.len() > 4 * self.due.len() + 1024 {
            // Drop the entries of NOTIFYs owed no more.
            self.queue = self
                .due
                .iter()
                .map(|(id, at)| std::cmp::Reverse((*at, id.clone())))
                .collect();
        }
    }

    pub(super) fn forget(&mut self, id: &str) {
        self.due.remove(id);
        self.sent.remove(id);
    }

    /// The subscriptions whose NOTIFY is owed by `now`.
    pub(super) fn take_due(&mut self, now: tokio::time::Instant) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(std::cmp::Reverse((at, _))) = self.queue.peek() {
            if *at > now {
                break;
            }
            let Some(std::cmp::Reverse((at, id))) = self.queue.pop() else {
                break;
            };
            if self.due.get(&id) == Some(&at) {
                self.due.remove(&id);
                out.push(id);
            }
        }
        out
    }
}
