//! Recording and export end to end: simulated musicians publish real Opus tones through the
//! SFU while it records; the exports are checked with independent tools (flac, opusinfo,
//! sox) that `scripts/setup` installs. No assertion depends on how fast anything runs: the
//! scenario's own timing (who plays when) is measured and the audio is checked against it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use veza_sfu::sim::{SimOptions, SimParticipant};
use veza_signaling::{ClientMessage, ErrorCode, Grants, ServerMessage};

const WAIT: Duration = Duration::from_secs(30);

fn unix_ms(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1000.0
}

fn config_in(name: &str) -> veza_sfu::Config {
    let mut c = common::test_config();
    c.data_dir = std::env::temp_dir().join(format!("veza-rec-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&c.data_dir);
    c
}

fn tone_options(hz: f32) -> SimOptions {
    SimOptions { tone_hz: Some(hz), ..SimOptions::default() }
}

fn musician_grants() -> Grants {
    // Publishers only: the test listens to the recording, not to each other.
    Grants { subscribe: false, ..Grants::default() }
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let token = Some(self.token.as_str()).filter(|t| !t.is_empty());
        common::http_json(&self.http, format!("{}{path}", self.base), token, method, body).await
    }

    async fn post(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, body).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// Submits an export and waits for it to finish; returns the job.
    async fn export(&self, session: &str, rid: &str, body: Value) -> Value {
        let (status, job) = self.post(&format!("/v1/sessions/{session}/recordings/{rid}/exports"), Some(body)).await;
        assert_eq!(status, 202, "{job}");
        let eid = job["id"].as_str().unwrap().to_owned();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let (status, job) = self.get(&format!("/v1/sessions/{session}/recordings/{rid}/exports/{eid}")).await;
            assert_eq!(status, 200, "{job}");
            let p = job["progress"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&p), "progress {p}");
            match job["state"].as_str().unwrap() {
                "done" => return job,
                "failed" => panic!("export failed: {job}"),
                _ => {}
            }
            assert!(tokio::time::Instant::now() < deadline, "export did not finish: {job}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Downloads every file of a finished job into `dir`.
    async fn download(&self, job: &Value, dir: &Path) -> Vec<PathBuf> {
        std::fs::create_dir_all(dir).unwrap();
        let mut out = Vec::new();
        for (url, file) in job["urls"].as_array().unwrap().iter().zip(job["files"].as_array().unwrap()) {
            let resp = self.http.get(format!("{}{}", self.base, url.as_str().unwrap())).bearer_auth(&self.token);
            let resp = resp.send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            let bytes = resp.bytes().await.unwrap();
            assert_eq!(bytes.len() as u64, file["bytes"].as_u64().unwrap());
            let path = dir.join(file["name"].as_str().unwrap());
            std::fs::write(&path, &bytes).unwrap();
            out.push(path);
        }
        out
    }
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e} (scripts/setup installs it)"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Decodes any audio file with sox to mono f32 at 48 kHz.
fn sox_mono(path: &Path) -> Vec<f32> {
    let out = Command::new("sox")
        .arg(path)
        .args(["-t", "raw", "-e", "floating-point", "-b", "32", "-r", "48000", "-c", "1", "-"])
        .output()
        .expect("sox");
    assert!(out.status.success(), "sox failed on {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    out.stdout.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// sox's own estimate of a stretch's dominant frequency (`stat`: "Rough frequency").
fn sox_rough_frequency(path: &Path, from_s: f64, len_s: f64) -> f64 {
    let (ok, text) = run(Command::new("sox").arg(path).args([
        "-n",
        "remix",
        "-",
        "trim",
        &format!("{from_s:.3}"),
        &format!("{len_s:.3}"),
        "stat",
    ]));
    assert!(ok, "sox stat: {text}");
    let line = text.lines().find(|l| l.starts_with("Rough")).unwrap_or_else(|| panic!("no frequency in {text}"));
    line.split(':').nth(1).unwrap().trim().parse().unwrap()
}

/// Power of `hz` in `x` (Goertzel), normalised by length.
fn tone_power(x: &[f32], hz: f64) -> f64 {
    let w = std::f64::consts::TAU * hz / 48_000.0;
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0f64, 0f64);
    for &v in x {
        let s = f64::from(v) + c * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    (s1 * s1 + s2 * s2 - c * s1 * s2) / (x.len() as f64).powi(2)
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

fn at(seconds: f64) -> usize {
    (seconds * 48_000.0).round().max(0.0) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tones_are_recorded_and_exported_as_aligned_stems_and_a_clean_mix() {
    let config = config_in("trio");
    let data_dir = config.data_dir.clone();
    let server = common::start_with(config).await;
    let url = server.ws_url();
    let api = Api { http: reqwest::Client::new(), base: server.http_url(), token: common::admin_token() };

    let mut sims = Vec::new();
    for (user, hz) in [("ana", 220.0), ("ben", 440.0), ("cleo", 880.0)] {
        let token = common::token_with("trio", user, musician_grants());
        let sim = SimParticipant::join(&url, &token, tone_options(hz)).await.expect("joins");
        sim.wait_publisher_connected(WAIT).await.unwrap();
        sims.push(sim);
    }

    let (status, rec) = api.post("/v1/sessions/trio/recordings", None).await;
    assert_eq!(status, 201, "{rec}");
    let rid = rec["id"].as_str().unwrap().to_owned();
    let rec_dir = data_dir.join("recordings/trio").join(&rid);
    let timeline: Value = serde_json::from_slice(&std::fs::read(rec_dir.join("timeline.json")).unwrap()).unwrap();
    let zero = timeline["started_at_unix_ms"].as_f64().unwrap();
    for sim in &sims {
        sim.wait_event(WAIT, |m| matches!(m, ServerMessage::RecordingStarted { recording_id } if *recording_id == rid))
            .await
            .unwrap();
    }

    // The scenario: join at 0, 0.5 and 1 s; ben mutes for a second; everyone plays on a second.
    let mut joined_at = Vec::new();
    for (i, sim) in sims.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        joined_at.push((unix_ms(SystemTime::now()) - zero) / 1000.0);
        sim.start_publishing();
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let muted_at = (unix_ms(SystemTime::now()) - zero) / 1000.0;
    sims[1].stop_publishing();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let unmuted_at = (unix_ms(SystemTime::now()) - zero) / 1000.0;
    sims[1].start_publishing();
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // Exporting while recording is refused.
    let (status, body) =
        api.post(&format!("/v1/sessions/trio/recordings/{rid}/exports"), Some(json!({"format": "flac"}))).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("recording_active")), "{body}");

    let (status, stopped) = api.post(&format!("/v1/sessions/trio/recordings/{rid}/stop"), None).await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["state"], "stopped");
    assert_eq!(stopped["tracks"].as_array().unwrap().len(), 3, "{stopped}");
    let (_, list) = api.get("/v1/sessions/trio/recordings").await;
    assert_eq!(list["recordings"][0]["id"], rid.as_str());
    eprintln!("scenario: joins {joined_at:?}, ben muted {muted_at:.3}..{unmuted_at:.3} s; recording {stopped}");

    // The live files are valid Ogg Opus by opusinfo's reading.
    let timeline: Value = serde_json::from_slice(&std::fs::read(rec_dir.join("timeline.json")).unwrap()).unwrap();
    let tracks = timeline["tracks"].as_array().unwrap();
    for t in tracks {
        let (ok, text) = run(Command::new("opusinfo").arg(rec_dir.join(t["file"].as_str().unwrap())));
        assert!(ok && !text.contains("WARNING") && !text.contains("ERROR"), "opusinfo: {text}");
        assert_eq!(t["dropped_packets"], 0);
    }

    // The publishers' RTCP sender reports are in the timeline, and their clocks agree with the
    // track's: each report's RTP time is where the track's RTP clock stood at its NTP time
    // (within a second and a half: ben's clock stood still while he was muted).
    let now_ms = unix_ms(SystemTime::now());
    for t in tracks {
        let reports = t["sender_reports"].as_array().unwrap();
        assert!(!reports.is_empty(), "no sender reports for {}: {t}", t["name"]);
        let first_rtp = t["first_rtp_timestamp"].as_u64().unwrap() as u32;
        let first_arrival = t["first_arrival_unix_ms"].as_f64().unwrap();
        for r in reports {
            let (ntp_ms, arrival_ms) = (r["ntp_unix_ms"].as_f64().unwrap(), r["arrival_unix_ms"].as_f64().unwrap());
            let rtp = r["rtp"].as_u64().unwrap() as u32;
            assert!(r["ntp"].as_u64().unwrap() > 0 && rtp != 0, "{r}");
            assert!((ntp_ms - now_ms).abs() < 60_000.0, "NTP time {ntp_ms} is not now ({now_ms}): {r}");
            assert!(arrival_ms >= zero - 1.0 && arrival_ms <= now_ms && (arrival_ms - ntp_ms).abs() < 1_000.0, "{r}");
            let rtp_elapsed_ms = f64::from(rtp.wrapping_sub(first_rtp) as i32) / 48.0;
            let wall_elapsed_ms = ntp_ms - first_arrival;
            assert!(
                (rtp_elapsed_ms - wall_elapsed_ms).abs() < 1_500.0,
                "{}: sender report {r} puts the RTP clock {rtp_elapsed_ms:.0} ms after the first packet, \
                 the wall clock {wall_elapsed_ms:.0} ms",
                t["name"]
            );
        }
    }

    let job = api.export("trio", &rid, json!({"format": "flac", "layout": "stems", "bit_depth": 24})).await;
    let out = data_dir.join("downloads");
    let stems = api.download(&job, &out.join("stems")).await;
    assert_eq!(stems.len(), 3);
    let job = api.export("trio", &rid, json!({"format": "wav", "layout": "mix", "bit_depth": 16})).await;
    let mix = api.download(&job, &out.join("mix")).await.pop().unwrap();

    let mut lengths = Vec::new();
    for (i, (hz, name)) in [(220.0, "ana"), (440.0, "ben"), (880.0, "cleo")].into_iter().enumerate() {
        let stem = stems.iter().find(|p| p.file_name().unwrap().to_string_lossy().contains(name)).unwrap();
        let (ok, text) = run(Command::new("flac").args(["-t", "-s"]).arg(stem));
        assert!(ok, "flac -t {}: {text}", stem.display());
        let (_, tags) = run(Command::new("metaflac").args(["--list", "--block-type=VORBIS_COMMENT"]).arg(stem));
        assert!(tags.contains(&format!("ARTIST={name} name")) && tags.contains("VEZA_SESSION=trio"), "{tags}");
        assert!(tags.contains(&format!("VEZA_START={}", timeline["started_at"].as_str().unwrap())), "{tags}");

        let x = sox_mono(stem);
        lengths.push(x.len());
        // Dominant frequency while this musician plays alone or with others, before the mute.
        let f = sox_rough_frequency(stem, joined_at[i] + 0.1, 0.4);
        assert!((f - hz).abs() < hz * 0.03, "{name}: rough frequency {f} Hz, want {hz}");
        // The tone starts where the musician joined.
        let onset = x.iter().position(|v| v.abs() > 0.05).unwrap() as f64 / 48_000.0;
        assert!(
            (onset - joined_at[i]).abs() <= 0.020,
            "{name}: tone starts at {onset:.4} s, joined at {:.4} s",
            joined_at[i]
        );
        eprintln!("{name}: {f} Hz, tone starts at {onset:.4} s, joined at {:.4} s", joined_at[i]);
        // Silence before it.
        assert!(rms(&x[..at(joined_at[i] - 0.03)]) < 1e-3, "{name}: not silent before joining");
        if name == "ben" {
            let muted = &x[at(muted_at + 0.06)..at(unmuted_at - 0.06)];
            assert!(rms(muted) < 1e-3, "ben's muted second is not silent: rms {}", rms(muted));
            let playing = &x[at(unmuted_at + 0.1)..at(unmuted_at + 0.5)];
            assert!(rms(playing) > 0.2, "ben does not play after unmuting: rms {}", rms(playing));
        }
    }
    assert!(lengths.windows(2).all(|w| w[0] == w[1]), "stem lengths differ: {lengths:?}");

    let (ok, text) = run(Command::new("sox").arg(&mix).args(["-n", "stat"]));
    assert!(ok, "{text}");
    let m = sox_mono(&mix);
    assert_eq!(m.len(), lengths[0], "the mix is as long as the stems");
    let peak = m.iter().fold(0f32, |p, v| p.max(v.abs()));
    assert!(peak < 0.95, "the mix peaks at {peak}: three −6 dBFS tones must be scaled, not clipped");
    let all_three = &m[at(joined_at[2] + 0.1)..at(muted_at - 0.05)];
    let powers: Vec<f64> = [220.0, 440.0, 880.0].iter().map(|hz| tone_power(all_three, *hz)).collect();
    let off_tone = tone_power(all_three, 330.0);
    for (hz, p) in [220, 440, 880].iter().zip(&powers) {
        assert!(
            *p > 100.0 * off_tone && *p > powers[0] * 0.25,
            "mix at {hz} Hz: power {p} ({powers:?}, 330 Hz: {off_tone})"
        );
    }
    // What was written and exported shows in /metrics.
    let metrics = api.http.get(format!("{}/metrics", api.base)).send().await.unwrap().text().await.unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    };
    assert!(value("veza_recording_bytes_total") > 0.0, "{metrics}");
    assert!(value("veza_export_jobs_total{outcome=\"done\"}") >= 2.0, "{metrics}");
    for sim in sims {
        sim.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_control_and_exports_refuse_bad_requests_clearly() {
    let config = config_in("bad");
    let server = common::start_with(config).await;
    let admin = Api { http: reqwest::Client::new(), base: server.http_url(), token: common::admin_token() };

    // No one is in the session yet.
    let (status, body) = admin.post("/v1/sessions/empty/recordings", None).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("session_not_found")), "{body}");
    let (status, body) = admin.post("/v1/sessions/empty/recordings/rec-nope/stop", None).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("recording_not_found")), "{body}");
    let (status, body) = admin.get("/v1/sessions/empty/recordings/rec-nope/exports/exp-nope").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("recording_not_found")), "{body}");

    // Tokens: none, a participant without `record`, an admin token on the WebSocket.
    let anon = Api { http: reqwest::Client::new(), base: server.http_url(), token: String::new() };
    let (status, body) = anon.get("/v1/sessions/jam/recordings").await;
    assert_eq!((status, body["code"].as_str()), (401, Some("token_missing")), "{body}");
    let plain = Api { http: reqwest::Client::new(), base: server.http_url(), token: common::token("jam", "zoe") };
    let (status, body) = plain.post("/v1/sessions/jam/recordings", None).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")), "{body}");
    let refused = SimParticipant::join(&server.ws_url(), &common::admin_token(), SimOptions::default()).await;
    assert!(refused.is_err(), "an admin token must not join a session");

    // Signaling: without the grant, refused; with it, everyone hears that recording started.
    let listener =
        SimParticipant::join(&server.ws_url(), &common::token("jam", "zoe"), SimOptions::default()).await.unwrap();
    listener.send(&ClientMessage::StartRecording).await.unwrap();
    let refusal = listener.wait_event(WAIT, |m| matches!(m, ServerMessage::Error { .. })).await.unwrap();
    assert!(matches!(refusal, ServerMessage::Error { code: ErrorCode::RecordNotAllowed, .. }), "{refusal:?}");
    let grants = Grants { record: true, ..Grants::default() };
    let recorder =
        SimParticipant::join(&server.ws_url(), &common::token_with("jam", "rec", grants), SimOptions::default())
            .await
            .unwrap();
    recorder.send(&ClientMessage::StartRecording).await.unwrap();
    let started = listener.wait_event(WAIT, |m| matches!(m, ServerMessage::RecordingStarted { .. })).await.unwrap();
    let ServerMessage::RecordingStarted { recording_id: rid } = started else { unreachable!() };

    // A second start is a conflict; exports of a running recording, bad formats and depths are refused.
    let (status, body) = admin.post("/v1/sessions/jam/recordings", None).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("recording_active")), "{body}");
    let exports = format!("/v1/sessions/jam/recordings/{rid}/exports");
    let (status, body) = admin.post(&exports, Some(json!({"format": "flac"}))).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("recording_active")), "{body}");
    recorder.send(&ClientMessage::StopRecording).await.unwrap();
    listener.wait_event(WAIT, |m| matches!(m, ServerMessage::RecordingStopped { .. })).await.unwrap();
    admin.post(&format!("/v1/sessions/jam/recordings/{rid}/stop"), None).await;
    let (status, body) = admin.post(&exports, Some(json!({"format": "mp3"}))).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_request")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("mp3"), "{body}");
    let (status, body) = admin.post(&exports, Some(json!({"format": "wav", "bit_depth": 20}))).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_request")), "{body}");
    let (status, body) = admin.post(&exports, Some(json!({"format": "wav", "layout": "surround"}))).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_request")), "{body}");
    let (status, body) = admin.get(&format!("{exports}/exp-nope")).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("export_not_found")), "{body}");
    // A participant with the grant may use REST on its own session only.
    let own =
        Api { http: reqwest::Client::new(), base: server.http_url(), token: common::token_with("jam", "rec", grants) };
    assert_eq!(own.get("/v1/sessions/jam/recordings").await.0, 200);
    assert_eq!(own.get("/v1/sessions/other/recordings").await.0, 403);
    listener.close().await;
    recorder.close().await;
}

/// A free loopback TCP port for a child server.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_recording_leaves_ogg_files_that_decode_up_to_the_last_flush() {
    let data_dir = std::env::temp_dir().join(format!("veza-rec-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_veza-sfu"))
        .args(["serve", "--dev", "--listen", &format!("127.0.0.1:{port}")])
        .env("VEZA_AUTH__SECRET", common::SECRET)
        .env("VEZA_DATA_DIR", &data_dir)
        .env("VEZA_MEDIA__UDP_PORT", "0")
        .env("VEZA_MEDIA__WORKERS", "1")
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("starting veza-sfu");
    let base = format!("http://127.0.0.1:{port}");
    common::eventually("the child server answers /healthz", || async {
        reqwest::get(format!("{base}/healthz")).await.is_ok_and(|r| r.status().is_success())
    })
    .await;
    let url = format!("ws://127.0.0.1:{port}/v1/ws");
    let sim = SimParticipant::join(&url, &common::token_with("crash", "ana", musician_grants()), tone_options(440.0))
        .await
        .unwrap();
    sim.wait_publisher_connected(WAIT).await.unwrap();
    let api = Api { http: reqwest::Client::new(), base, token: common::admin_token() };
    let (status, rec) = api.post("/v1/sessions/crash/recordings", None).await;
    assert_eq!(status, 201, "{rec}");
    let rec_dir = data_dir.join("recordings/crash").join(rec["id"].as_str().unwrap());
    sim.start_publishing();
    let started = std::time::Instant::now();
    // Wait for the writer to list the track, then play on.
    common::eventually("the timeline lists the track", || async { Timeline::tracks(&rec_dir) > 0 }).await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    child.start_kill().unwrap(); // SIGKILL
    let played = started.elapsed().as_secs_f64();
    child.wait().await.unwrap();
    sim.vanish().await;

    let timeline: Value = serde_json::from_slice(&std::fs::read(rec_dir.join("timeline.json")).unwrap()).unwrap();
    assert_eq!(timeline["state"], "recording", "the writer never got to finish");
    let file = rec_dir.join(timeline["tracks"][0]["file"].as_str().unwrap());
    let (ok, text) = run(Command::new("opusinfo").arg(&file));
    // opusinfo exits 1 for the missing end-of-stream page alone ("normal for live streams").
    let other_problems =
        text.lines().any(|l| (l.contains("WARNING") && !l.contains("EOS not set")) || l.contains("ERROR"));
    assert!((ok || text.contains("EOS not set")) && !other_problems, "opusinfo on the killed recording: {text}");
    let wav = data_dir.join("killed.wav");
    let (ok, text) = run(Command::new("opusdec").arg("--quiet").arg(&file).arg(&wav));
    assert!(ok, "opusdec on the killed recording: {text}");
    let decoded = sox_mono(&wav);
    let decoded_s = decoded.len() as f64 / 48_000.0;
    // Pages reach the disk at least twice a second: at most ~0.5 s (plus a page) is lost.
    assert!(decoded_s > played - 1.0 && decoded_s <= played + 0.1, "decoded {decoded_s:.2} s of {played:.2} s played");
    let f = sox_rough_frequency(&wav, 0.2, decoded_s - 0.4);
    assert!((f - 440.0).abs() < 15.0, "rough frequency {f}");

    // The CLI exports what survived.
    let out = data_dir.join("cli-out");
    let (ok, text) = run(Command::new(env!("CARGO_BIN_EXE_veza-sfu"))
        .args(["export"])
        .arg(&rec_dir)
        .args(["--format", "wav", "--layout", "stems", "--bit-depth", "16", "--quiet", "--out"])
        .arg(&out));
    assert!(ok, "veza-sfu export: {text}");
    let stems: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(stems.len(), 1);
    let (ok, text) = run(Command::new("sox").arg(&stems[0]).args(["-n", "stat"]));
    assert!(ok, "{text}");
}

/// Reads the number of tracks a timeline lists (0 while it has none or is being replaced).
struct Timeline;

impl Timeline {
    fn tracks(dir: &Path) -> usize {
        std::fs::read(dir.join("timeline.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["tracks"].as_array().map(Vec::len))
            .unwrap_or(0)
    }
}
