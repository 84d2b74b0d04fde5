//! One message as the TCP framer cut it: `parse` must never panic, and what it
//! lets through must be readable by the typed accessors and answerable.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use presence_sip::TransportKind;

fuzz_target!(|data: &[u8]| {
    common::check(data, TransportKind::Stream);
});
