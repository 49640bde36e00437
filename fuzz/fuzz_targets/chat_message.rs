//! Fuzz target `chat_message`: one message on a participant's chat data channel (`veza_sfu::fuzzing::chat_message`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    veza_sfu::fuzzing::chat_message(data);
});
