//! Graceful drain of the real binary: `veza-sfu serve --dev` as a child process, signalled
//! with SIGTERM/SIGINT while a simulated musician is in a session.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use veza_sfu::sim::{SimOptions, SimParticipant};
use veza_signaling::{Client, ClientError, ErrorCode, HttpError, ServerMessage};

const WAIT: Duration = Duration::from_secs(30);

/// A `veza-sfu serve --dev` process on ephemeral ports, killed on drop if still running.
struct Sfu {
    child: Child,
    http: String,
    token: String,
    /// Everything the process printed (its logs go to stdout too).
    output: mpsc::Receiver<String>,
    printed: Vec<String>,
    dir: PathBuf,
}

impl Sfu {
    fn start(name: &str, env: &[(&str, &str)]) -> Sfu {
        let dir = std::env::temp_dir().join(format!("veza-drain-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_veza-sfu"));
        cmd.args(["serve", "--dev", "--listen", "127.0.0.1:0", "--udp-port", "0"])
            .env("VEZA_DATA_DIR", &dir)
            .env("VEZA_MEDIA__WORKERS", "1")
            .env("RUST_LOG", "info,rtc=error,webrtc=error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("starting veza-sfu");
        let stdout = child.stdout.take().unwrap();
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut sfu = Sfu { child, http: String::new(), token: String::new(), output, printed: Vec::new(), dir };
        let url = sfu.wait_line("Open the reference client: ");
        let url = url.split_once("Open the reference client: ").unwrap().1.trim().to_owned();
        let (http, token) = url.split_once("/?token=").expect("URL with a token");
        sfu.http = http.to_owned();
        sfu.token = token.to_owned();
        sfu
    }

    /// The next printed line containing `needle` (bounded; fails with everything printed).
    fn wait_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(line) => {
                    self.printed.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => panic!("no line with {needle:?} ({e}); printed:\n{}", self.printed.join("\n")),
            }
        }
    }

    fn ws_url(&self) -> String {
        format!("{}/v1/ws", self.http.replacen("http://", "ws://", 1))
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on the pid of our own child process.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
    }

    fn still_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the process to exit (bounded polling of its state).
    async fn exit_status(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                while let Ok(line) = self.output.try_recv() {
                    self.printed.push(line);
                }
                return status;
            }
            assert!(Instant::now() < deadline, "veza-sfu did not exit; printed:\n{}", self.printed.join("\n"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn readyz(&self) -> (u16, String) {
        let resp = reqwest::get(format!("{}/readyz", self.http)).await.expect("GET /readyz");
        (resp.status().as_u16(), resp.text().await.unwrap())
    }
}

impl Drop for Sfu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn join(sfu: &Sfu) -> SimParticipant {
    let opts = SimOptions { publish: true, ..SimOptions::default() };
    SimParticipant::join(&sfu.ws_url(), &sfu.token, opts).await.expect("joins")
}

async fn wait_draining(sim: &SimParticipant) -> u64 {
    match sim.wait_event(WAIT, |m| matches!(m, ServerMessage::Draining { .. })).await.expect("a draining notice") {
        ServerMessage::Draining { reconnect_within_ms, message } => {
            assert!(!message.is_empty());
            reconnect_within_ms
        }
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_0_once_the_last_participant_leaves() {
    let mut sfu = Sfu::start("last-leaves", &[]);
    let ana = join(&sfu).await;
    ana.wait_publisher_connected(WAIT).await.unwrap();
    assert_eq!(sfu.readyz().await.0, 200);

    sfu.signal(libc::SIGTERM);
    let within = wait_draining(&ana).await;
    assert!(within > 0 && within <= 600_000, "the default drain_timeout is 10 min, got {within} ms");

    // Not ready, and a new join is refused with the reconnect hint.
    let (status, body) = sfu.readyz().await;
    assert_eq!(status, 503);
    assert!(body.contains("draining"), "{body}");
    match Client::connect(&sfu.ws_url(), &sfu.token).await {
        Err(ClientError::Rejected { status: 503, body: Some(HttpError { code: ErrorCode::Draining, .. }) }) => {}
        Err(e) => panic!("expected a 503 draining refusal, got {e}"),
        Ok(_) => panic!("a join was accepted while draining"),
    }
    let refused = reqwest::get(format!("{}/v1/ws?access_token={}", sfu.http, sfu.token)).await.unwrap();
    assert_eq!(refused.status().as_u16(), 503);
    assert!(refused.headers().get("retry-after").is_some(), "{:?}", refused.headers());

    // Ana is still in: the jam was not cut, the process waits for her.
    assert!(sfu.still_running(), "veza-sfu exited with a participant still connected");
    assert!(ana.signaling_closed().is_none());

    ana.leave().await.unwrap();
    let status = sfu.exit_status().await;
    assert_eq!(status.code(), Some(0), "printed:\n{}", sfu.printed.join("\n"));
    assert!(sfu.printed.iter().any(|l| l.contains("the last participant left")), "{}", sfu.printed.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let mut sfu = Sfu::start("second-signal", &[]);
    let ana = join(&sfu).await;
    sfu.signal(libc::SIGINT);
    wait_draining(&ana).await;
    assert!(sfu.still_running());
    sfu.signal(libc::SIGTERM);
    let status = sfu.exit_status().await;
    assert_eq!(status.code(), Some(0), "printed:\n{}", sfu.printed.join("\n"));
    ana.wait_signaling_closed(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_timeout_ends_a_drain() {
    let mut sfu = Sfu::start("timeout", &[("VEZA_DRAIN_TIMEOUT", "2s")]);
    let ana = join(&sfu).await;
    sfu.signal(libc::SIGTERM);
    let within = wait_draining(&ana).await;
    assert!(within <= 2_000, "{within}");
    let status = sfu.exit_status().await;
    assert_eq!(status.code(), Some(0), "printed:\n{}", sfu.printed.join("\n"));
    assert!(sfu.printed.iter().any(|l| l.contains("drain timeout passed")), "{}", sfu.printed.join("\n"));
    ana.wait_signaling_closed(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_nobody_connected_exits_0() {
    let mut sfu = Sfu::start("empty", &[]);
    sfu.signal(libc::SIGTERM);
    let status = sfu.exit_status().await;
    assert_eq!(status.code(), Some(0), "printed:\n{}", sfu.printed.join("\n"));
}
