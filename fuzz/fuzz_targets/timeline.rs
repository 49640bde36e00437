//! Fuzz target `timeline`: a recording's timeline.json as export reads it (`veza_sfu::fuzzing::timeline`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    veza_sfu::fuzzing::timeline(data);
});
