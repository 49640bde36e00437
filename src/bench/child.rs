//! The server under test: a child process of our own binary, measured through /proc and /metrics.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use veza_signaling::Grants;

use super::prom::{self, Histogram};
use crate::auth::{Identity, Minter};
use crate::config::AuthConfig;
use crate::telemetry::{FORWARD_LATENCY, RTP_FORWARDED};

pub struct Server {
    child: Child,
    data_dir: tempdir::Dir,
    pub ws_url: String,
    http_url: String,
    http: reqwest::Client,
    minter: Minter,
}

/// One reading of the server's counters.
pub struct Sample {
    pub at: Instant,
    pub cpu_seconds: f64,
    pub forwarded: u64,
    pub forward_latency: Histogram,
}

/// The CPUs the calling thread may run on, in increasing order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|cpu| libc::CPU_ISSET(*cpu, &set)).collect()
    }
}

/// Pins the calling thread (and threads it creates later) to one CPU.
pub fn pin_self_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

impl Server {
    /// Starts `veza-sfu serve --dev` with one media worker; `env` is set in the child only
    /// (e.g. a profiler's `LD_PRELOAD`, or an allocator setting under test).
    pub async fn start(
        max_participants: usize,
        cpu: Option<usize>,
        env: &[(String, String)],
    ) -> anyhow::Result<Server> {
        let data_dir = tempdir::Dir::new()?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["serve", "--dev", "--listen", "127.0.0.1:0", "--udp-port", "0"])
            .env("VEZA_DATA_DIR", data_dir.path())
            .env("VEZA_MEDIA__WORKERS", "1")
            .env("VEZA_SESSIONS__MAX_PARTICIPANTS", max_participants.to_string())
            // Every simulated musician joins from 127.0.0.1.
            .env("VEZA_HTTP__JOIN_ATTEMPTS_PER_MINUTE", "0")
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(cpu) = cpu {
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    pin_self_to_cpu(cpu);
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().context("starting the server")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let http_url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix("Open the reference client: ") {
                    return Ok(rest.split("/?token=").next().unwrap_or(rest).to_owned());
                }
            }
            bail!("the server exited before printing its URL")
        })
        .await
        .context("waiting for the server to start")??;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let secret = crate::dev::read_secret(data_dir.path())?.context("the dev server left no secret")?;
        let minter = Minter::from_config(&AuthConfig { secret: Some(secret), ..AuthConfig::default() })?;
        let ws_url = format!("{}/v1/ws", http_url.replacen("http://", "ws://", 1));
        let server = Server { child, data_dir, ws_url, http_url, http: reqwest::Client::new(), minter };
        if let Some(cpu) = cpu {
            // Figures from a server that shares the generator's core mean nothing: check.
            let allowed = server.status_text("Cpus_allowed_list")?;
            if allowed != cpu.to_string() {
                bail!("the server runs on CPUs {allowed}, not on CPU {cpu} alone as pinned");
            }
        }
        Ok(server)
    }

    pub fn token(&self, session: &str, user: &str, publish: bool) -> anyhow::Result<String> {
        let identity = Identity {
            user: user.to_owned(),
            session: session.to_owned(),
            name: user.to_owned(),
            grants: Grants { publish, ..Grants::default() },
        };
        Ok(self.minter.mint(&identity, Duration::from_secs(3600))?)
    }

    /// A service token for the REST API (admin grant), valid for `ttl`.
    pub fn admin_token(&self, ttl: Duration) -> anyhow::Result<String> {
        Ok(self.minter.mint_admin("veza-bench", ttl)?)
    }

    /// `path` (starting with `/`) on the server's HTTP listener.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http_url)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("the server exited")
    }

    /// Resident memory of the server process.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        Ok(self.status_field("VmRSS")? * 1024)
    }

    /// OS threads of the server process.
    pub fn threads(&self) -> anyhow::Result<u64> {
        self.status_field("Threads")
    }

    /// Open file descriptors of the server process (sockets, files, epoll, pipes).
    pub fn open_fds(&self) -> anyhow::Result<u64> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid()?))?.count() as u64)
    }

    /// The first number of a `Name:` line of /proc/PID/status.
    fn status_field(&self, name: &str) -> anyhow::Result<u64> {
        let text = self.status_text(name)?;
        text.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).with_context(|| format!("{name}: {text:?}"))
    }

    /// The value of field `name` of /proc/PID/status, trimmed.
    fn status_text(&self, name: &str) -> anyhow::Result<String> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?))?;
        status
            .lines()
            .find_map(|l| Some(l.strip_prefix(name)?.strip_prefix(':')?.trim().to_owned()))
            .with_context(|| format!("{name} in /proc/PID/status"))
    }

    /// User + system CPU seconds the server process has used.
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?))?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).context("/proc/PID/stat")?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
            + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Ok(ticks as f64 / hz)
    }

    /// Waits for the worker's next publication so counters and CPU are read together.
    pub async fn sample(&self) -> anyhow::Result<Sample> {
        let text = self.metrics().await?;
        let forwarded = prom::sum(&text, RTP_FORWARDED) as u64;
        // The worker publishes counters once a second: wait for the next publication, then
        // read CPU right away, so both describe the same moment.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let text = self.metrics().await?;
            let now_forwarded = prom::sum(&text, RTP_FORWARDED) as u64;
            if now_forwarded != forwarded || Instant::now() > deadline {
                return Ok(Sample {
                    at: Instant::now(),
                    cpu_seconds: self.cpu_seconds()?,
                    forwarded: now_forwarded,
                    forward_latency: prom::histogram(&text, FORWARD_LATENCY),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(self.http.get(format!("{}/metrics", self.http_url)).send().await?.error_for_status()?.text().await?)
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        drop(self.data_dir);
    }
}

/// A private temporary directory, removed on drop.
mod tempdir {
    use std::path::{Path, PathBuf};

    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new() -> std::io::Result<Dir> {
            let path =
                std::env::temp_dir().join(format!("veza-bench-{}-{}", std::process::id(), rand::random::<u32>()));
            std::fs::create_dir_all(&path)?;
            Ok(Dir(path))
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
