//! Deliberate misbehaviour, for the tests of the tools that watch us (the
//! load generator's canary) and of ordering guarantees. Not part of the
//! configuration: no flag, no environment variable, no field of `Config`;
//! only `start_with_faults` takes them. The default is a correct server.

/// Test-only fault hooks; the default is a correct server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// When N > 0, the notifier silently skips every Nth NOTIFY it would send
    /// and behaves as if the watcher had answered 200.
    pub skip_notify_every: u32,
    /// Hold every answer to a SUBSCRIBE this long before sending it, so that
    /// the dialog's first NOTIFY is ready first.
    pub delay_subscribe_answer_ms: u64,
}
