//! Fuzz target `signaling_message`: one signaling WebSocket text frame, as src/http/ws.rs parses it (`veza_sfu::fuzzing::signaling_message`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    veza_sfu::fuzzing::signaling_message(data);
});
