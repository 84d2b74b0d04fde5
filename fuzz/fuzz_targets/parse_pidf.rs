//! A PIDF body: `presence_core::pidf::parse` must never panic, and whatever
//! it accepts must compose into a document it accepts again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use presence_core::pidf;

fuzz_target!(|data: &[u8]| {
    if let Ok(doc) = pidf::parse(data) {
        let out = pidf::compose("sip:fuzz@example.com", [&doc]);
        let again = pidf::parse(out.as_bytes())
            .unwrap_or_else(|e| panic!("composition refused ({e}):\n{out}"));
        assert_eq!(pidf::compose("sip:fuzz@example.com", [&again]), out);
    }
});
