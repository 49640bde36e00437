//! Fuzz target `token`: a bearer token (JWT) as the WebSocket upgrade and the REST API check it (`veza_sfu::fuzzing::token`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    veza_sfu::fuzzing::token(data);
});
