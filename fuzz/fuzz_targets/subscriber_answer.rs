//! Fuzz target `subscriber_answer`: a client's answer to the server's subscriber offer (`veza_sfu::fuzzing::subscriber_answer`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    veza_sfu::fuzzing::subscriber_answer(data);
});
