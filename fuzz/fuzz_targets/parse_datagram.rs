//! One UDP datagram: `parse` must never panic, and whatever it lets through
//! must be readable by the typed accessors and answerable.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use presence_sip::TransportKind;

fuzz_target!(|data: &[u8]| {
    common::check(data, TransportKind::Datagram);
});
