//! Fuzz target `signaling_session`: a sequence of signaling frames from two participants through the session host (`veza_sfu::fuzzing::signaling_session`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    veza_sfu::fuzzing::signaling_session(data);
});
