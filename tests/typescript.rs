//! The TypeScript declarations of the signaling protocol (`clients/typescript/protocol.ts`)
//! are generated from `veza-signaling`'s serde types (ts-rs) and checked in for the React app.
//! This test fails when they are out of date; `VEZA_UPDATE_TS=1 cargo test --test typescript`
//! rewrites them.

use std::path::Path;

use ts_rs::{Config, TS};
use veza_signaling::chat::{ChatIn, ChatOut, ChatSender};
use veza_signaling::*;

const FILE: &str = "clients/typescript/protocol.ts";

fn export<T: TS>(cfg: &Config, out: &mut String) {
    let decl = T::decl(cfg);
    // ts-rs puts the doc comment first, then `type Name = ...`.
    let decl = match decl.find("type ") {
        Some(at) if at == 0 || decl[..at].ends_with('\n') => format!("{}export {}", &decl[..at], &decl[at..]),
        _ => decl,
    };
    out.push_str(&decl);
    out.push_str("\n\n");
}

fn generate() -> String {
    let cfg = Config::new().with_large_int("number");
    let mut out = String::from(
        "// Generated from the veza-signaling crate (signaling/src) by tests/typescript.rs: do not edit.\n\
         // Regenerate with `VEZA_UPDATE_TS=1 cargo test --test typescript`.\n\n",
    );
    out.push_str(&format!("export const PROTOCOL_VERSION = {PROTOCOL_VERSION};\n"));
    out.push_str(&format!("export const CHAT_LABEL = {CHAT_LABEL:?};\n\n"));
    export::<ClientMessage>(&cfg, &mut out);
    export::<ServerMessage>(&cfg, &mut out);
    export::<Joined>(&cfg, &mut out);
    export::<ParticipantInfo>(&cfg, &mut out);
    export::<TrackInfo>(&cfg, &mut out);
    export::<Grants>(&cfg, &mut out);
    export::<IceServer>(&cfg, &mut out);
    export::<IceCandidate>(&cfg, &mut out);
    export::<PcTarget>(&cfg, &mut out);
    export::<CodecProfile>(&cfg, &mut out);
    export::<LeaveReason>(&cfg, &mut out);
    export::<ErrorCode>(&cfg, &mut out);
    export::<HttpError>(&cfg, &mut out);
    export::<ChatIn>(&cfg, &mut out);
    export::<ChatOut>(&cfg, &mut out);
    export::<ChatSender>(&cfg, &mut out);
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

#[test]
fn typescript_protocol_types_are_up_to_date() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(FILE);
    let fresh = generate();
    if std::env::var_os("VEZA_UPDATE_TS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == fresh,
        "{FILE} is out of date with veza-signaling: run `VEZA_UPDATE_TS=1 cargo test --test typescript` and commit it"
    );
}
