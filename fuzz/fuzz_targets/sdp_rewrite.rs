//! Fuzz target `sdp_rewrite`: our own SDP text handling (src/media/sdp.rs) on any text (`veza_sfu::fuzzing::sdp_rewrite`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    veza_sfu::fuzzing::sdp_rewrite(data);
});
