//! The REST session API as the Veza Go API uses it: service tokens, sessions created ahead of
//! the musicians, kicks, server-side mutes, live grant changes and ended sessions, observed
//! through simulated musicians and the API's own answers.

mod common;

use std::time::Duration;

use serde_json::{Value, json};
use veza_sfu::sim::{SimOptions, SimParticipant};
use veza_signaling::{ErrorCode, Grants, LeaveReason, ServerMessage};

const WAIT: Duration = Duration::from_secs(30);

struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    fn new(server: &veza_sfu::Server, token: Option<String>) -> Api {
        Api { http: reqwest::Client::new(), base: server.http_url(), token }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        common::http_json(&self.http, format!("{}{path}", self.base), self.token.as_deref(), method, body).await
    }

    async fn raw(&self, method: reqwest::Method, path: &str, body: &str) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).body(body.to_owned());
        req = req.header("content-type", "application/json");
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("HTTP request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    /// The server's count of RTP packets received from `pid`.
    async fn packets_from(&self, session: &str, pid: &str) -> u64 {
        let (status, s) = self.get(&format!("/v1/sessions/{session}")).await;
        assert_eq!(status, 200, "{s}");
        participant(&s, pid)["rtp_packets_received"].as_u64().unwrap()
    }
}

fn participant<'a>(session: &'a Value, pid: &str) -> &'a Value {
    session["participants"].as_array().unwrap().iter().find(|p| p["id"] == pid).expect("participant listed")
}

fn closed_config() -> veza_sfu::Config {
    let mut c = common::test_config();
    c.sessions.auto_create = false;
    c
}

async fn join(server: &veza_sfu::Server, session: &str, user: &str) -> SimParticipant {
    SimParticipant::join(&server.ws_url(), &common::token(session, user), SimOptions::default()).await.expect("joins")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_api_flow_create_join_kick_get_end() {
    let server = common::start_with(closed_config()).await;
    let api = Api::new(&server, Some(common::admin_token()));

    // With auto_create off, a token for a session nobody created is refused.
    let refused = SimParticipant::join(&server.ws_url(), &common::token("gig", "ana"), SimOptions::default()).await;
    let err = refused.err().expect("refused");
    let refusal = err.downcast_ref::<veza_sfu::sim::ServerRefused>().expect("a server refusal");
    assert_eq!(refusal.code, ErrorCode::SessionNotFound);

    let (status, created) =
        api.post("/v1/sessions", json!({"id": "gig", "max_participants": 4, "metadata": {"band": "x"}})).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["id"], "gig");
    assert_eq!(created["max_participants"], 4);
    assert_eq!(created["metadata"]["band"], "x");
    assert_eq!(created["num_participants"], 0);
    let (status, again) = api.post("/v1/sessions", json!({"id": "gig"})).await;
    assert_eq!((status, again["code"].as_str()), (409, Some("session_exists")));

    let ana = join(&server, "gig", "ana").await;
    let ben = join(&server, "gig", "ben").await;
    let (status, s) = api.get("/v1/sessions/gig").await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["num_participants"], 2);
    assert_eq!(participant(&s, ana.id())["user"], "ana");
    let (_, list) = api.get("/v1/sessions").await;
    assert!(list["sessions"].as_array().unwrap().iter().any(|s| s["id"] == "gig"), "{list}");

    let (status, body) = api.post(&format!("/v1/sessions/gig/participants/{}/kick", ben.id()), json!({})).await;
    assert_eq!(status, 204, "{body}");
    ben.wait_signaling_closed(WAIT).await.unwrap();
    let kicked =
        ben.wait_event(WAIT, |m| matches!(m, ServerMessage::ParticipantLeft { reason: LeaveReason::Kicked, .. })).await;
    assert!(kicked.is_ok(), "the kicked musician is told why: {:?}", ben.events());
    let ben_id = ben.id().to_owned();
    ana.wait_event(WAIT, |m| {
        matches!(m, ServerMessage::ParticipantLeft { participant_id, reason: LeaveReason::Kicked } if *participant_id == ben_id)
    })
    .await
    .unwrap();
    let (_, s) = api.get("/v1/sessions/gig").await;
    assert_eq!(s["num_participants"], 1, "{s}");
    assert_eq!(s["participants"][0]["id"], ana.id());

    let (status, body) = api.delete("/v1/sessions/gig").await;
    assert_eq!(status, 204, "{body}");
    ana.wait_event(WAIT, |m| matches!(m, ServerMessage::SessionEnded { .. })).await.unwrap();
    ana.wait_signaling_closed(WAIT).await.unwrap();
    let (status, _) = api.get("/v1/sessions/gig").await;
    assert_eq!(status, 404);
    // Ended means gone: with auto_create off, joining it again is refused.
    let again = SimParticipant::join(&server.ws_url(), &common::token("gig", "cleo"), SimOptions::default()).await;
    assert!(again.is_err());
    for sim in [ana, ben] {
        sim.close().await;
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_refuses_bad_callers_unknown_sessions_and_bad_bodies() {
    let server = common::start().await;
    let admin = Api::new(&server, Some(common::admin_token()));

    let nobody = Api::new(&server, None);
    let (status, body) = nobody.get("/v1/sessions").await;
    assert_eq!((status, body["code"].as_str()), (401, Some("token_missing")));
    let forged = Api::new(&server, Some(format!("{}x", common::admin_token())));
    let (status, body) = forged.post("/v1/sessions", json!({})).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("token_bad_signature")), "{body}");
    let musician = Api::new(&server, Some(common::token("jam", "ana")));
    for (status, body) in [
        musician.get("/v1/sessions").await,
        musician.get("/v1/sessions/jam").await,
        musician.delete("/v1/sessions/jam").await,
        musician.post("/v1/sessions", json!({"id": "jam"})).await,
    ] {
        assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")), "{body}");
    }

    for (status, body) in [
        admin.get("/v1/sessions/nope").await,
        admin.delete("/v1/sessions/nope").await,
        admin.post("/v1/sessions/nope/participants/p1/kick", json!({})).await,
        admin.post("/v1/sessions/nope/participants/p1/mute", json!({"muted": true})).await,
        admin.put("/v1/sessions/nope/participants/p1/grants", json!({"publish": false})).await,
    ] {
        assert_eq!((status, body["code"].as_str()), (404, Some("session_not_found")), "{body}");
    }
    let (status, _) = admin.post("/v1/sessions", json!({"id": "jam"})).await;
    assert_eq!(status, 201);
    let (status, body) = admin.post("/v1/sessions/jam/participants/p-nobody/kick", json!({})).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("participant_not_found")), "{body}");

    for (status, body) in [
        admin.raw(reqwest::Method::POST, "/v1/sessions", "{not json").await,
        admin.post("/v1/sessions", json!({"id": "bad id!"})).await,
        admin.post("/v1/sessions", json!({"max_participants": 0})).await,
        admin.post("/v1/sessions", json!({"colour": "blue"})).await,
        admin.post("/v1/sessions/jam/participants/p1/mute", json!({"muted": "yes"})).await,
        admin.post("/v1/sessions/jam/participants/p1/mute", json!({})).await,
        admin.put("/v1/sessions/jam/participants/p1/grants", json!({"admin": true})).await,
    ] {
        assert_eq!((status, body["code"].as_str()), (400, Some("invalid_request")), "{body}");
    }

    // A generated id comes back, and the session is listed.
    let (status, created) = admin.post("/v1/sessions", json!({})).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (_, list) = admin.get("/v1/sessions").await;
    let ids: Vec<&str> = list["sessions"].as_array().unwrap().iter().filter_map(|s| s["id"].as_str()).collect();
    assert!(ids.contains(&id.as_str()) && ids.contains(&"jam"), "{list}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_mute_stops_forwarding_and_tells_everyone() {
    let server = common::start().await;
    let api = Api::new(&server, Some(common::admin_token()));
    let ana = join(&server, "mute", "ana").await;
    let ben = join(&server, "mute", "ben").await;
    ana.start_publishing();
    ben.wait_for_packets(ana.id(), 50, WAIT).await.unwrap();

    let path = format!("/v1/sessions/mute/participants/{}/mute", ana.id());
    let (status, view) = api.post(&path, json!({"muted": true})).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["admin_muted"], true);
    for sim in [&ana, &ben] {
        sim.wait_event(WAIT, |m| matches!(m, ServerMessage::TrackMuted { muted: true, .. })).await.unwrap();
    }
    // Ana keeps sending (the server counts it) while Ben hears nothing more. Packets already on
    // their way when the mute landed arrive during the first 50 the server counts.
    let at_mute = api.packets_from("mute", ana.id()).await;
    common::eventually("ana sends 50 more packets", || async {
        api.packets_from("mute", ana.id()).await >= at_mute + 50
    })
    .await;
    let heard = ben.received_from(ana.id()).map_or(0, |s| s.packets);
    let before = api.packets_from("mute", ana.id()).await;
    common::eventually("ana sends 100 more packets", || async {
        api.packets_from("mute", ana.id()).await >= before + 100
    })
    .await;
    assert_eq!(ben.received_from(ana.id()).map_or(0, |s| s.packets), heard, "a muted musician is not forwarded");

    let (status, view) = api.post(&path, json!({"muted": false})).await;
    assert_eq!((status, &view["admin_muted"]), (200, &json!(false)));
    ben.wait_for_packets(ana.id(), heard + 50, WAIT).await.unwrap();
    for sim in [ana, ben] {
        sim.close().await;
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_change_live_a_promoted_listener_is_heard_and_a_demoted_musician_is_not() {
    let server = common::start().await;
    let api = Api::new(&server, Some(common::admin_token()));
    let ana = join(&server, "grants", "ana").await;
    let listener_grants = Grants { publish: false, ..Grants::default() };
    let mut lee = SimParticipant::join(
        &server.ws_url(),
        &common::token_with("grants", "lee", listener_grants),
        SimOptions { publish: false, ..SimOptions::default() },
    )
    .await
    .expect("listener joins");
    ana.start_publishing();
    lee.wait_for_packets(ana.id(), 20, WAIT).await.unwrap();

    // Promote the listener: they are told, and the API shows it.
    let path = format!("/v1/sessions/grants/participants/{}/grants", lee.id());
    let (status, view) = api.put(&path, json!({"publish": true})).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["grants"]["publish"], true);
    lee.wait_event(WAIT, |m| matches!(m, ServerMessage::GrantsChanged { grants } if grants.publish)).await.unwrap();
    // The client now offers audio on its publisher connection, and Ana hears it.
    lee.publish_audio().await.expect("the promoted listener's audio offer is accepted");
    lee.start_publishing();
    ana.wait_for_packets(lee.id(), 20, WAIT).await.unwrap();

    // Demote the musician: their track is unpublished for everyone, forwarding stops.
    let path = format!("/v1/sessions/grants/participants/{}/grants", ana.id());
    let (status, view) = api.put(&path, json!({"publish": false})).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["tracks"], json!([]));
    ana.wait_event(WAIT, |m| matches!(m, ServerMessage::GrantsChanged { grants } if !grants.publish)).await.unwrap();
    lee.wait_event(WAIT, |m| matches!(m, ServerMessage::TrackUnpublished { .. })).await.unwrap();
    lee.wait_offered(ana.id(), false, WAIT).await.unwrap();
    for sim in [ana, lee] {
        sim.close().await;
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_record_session_records_from_creation_until_it_ends() {
    let mut config = closed_config();
    config.data_dir = std::env::temp_dir().join(format!("veza-autorec-{}", std::process::id()));
    let server = common::start_with(config).await;
    let api = Api::new(&server, Some(common::admin_token()));
    let (status, created) = api.post("/v1/sessions", json!({"id": "taped", "auto_record": true})).await;
    assert_eq!(status, 201, "{created}");
    let rid = created["recording_id"].as_str().expect("recording started with the session").to_owned();

    // A musician joining a recorded session is told so right after `joined`.
    let ana = join(&server, "taped", "ana").await;
    ana.wait_event(WAIT, |m| matches!(m, ServerMessage::RecordingStarted { recording_id } if *recording_id == rid))
        .await
        .unwrap();
    let (_, s) = api.get("/v1/sessions/taped").await;
    assert_eq!(s["recording_id"], rid.as_str());

    // Ending the session stops the recording: its files are final.
    let (status, _) = api.delete("/v1/sessions/taped").await;
    assert_eq!(status, 204);
    ana.wait_signaling_closed(WAIT).await.unwrap();
    let (status, rec) = api.get(&format!("/v1/sessions/taped/recordings/{rid}")).await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["state"], "stopped", "{rec}");
    ana.close().await;
    server.shutdown().await.unwrap();
}
