//! Fuzz target `datagrams`: UDP datagrams on a worker socket: demultiplexer, then rtc's STUN/DTLS/SRTP parsers (`veza_sfu::fuzzing::datagrams`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    veza_sfu::fuzzing::datagrams(data);
});
