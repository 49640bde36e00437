//! Fuzz target `ogg_track`: a recorded track's Ogg Opus file as export scans and decodes it (`veza_sfu::fuzzing::ogg_track`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    veza_sfu::fuzzing::ogg_track(data);
});
