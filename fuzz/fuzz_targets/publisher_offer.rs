//! Fuzz target `publisher_offer`: a client's publisher offer through the session host and rtc's SDP parser (`veza_sfu::fuzzing::publisher_offer`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    veza_sfu::fuzzing::publisher_offer(data);
});
