//! One `Config` for the whole server: built-in defaults < TOML file < `VEZA_*` environment.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use veza_signaling::IceServer;

/// The server's configuration. Every limit lives here, with its default beside it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Development mode: generated HS256 secret kept in `data_dir`, loopback-only listeners,
    /// sessions created on first join. Default: false.
    pub dev: bool,
    /// Where the server keeps its files (the dev secret; recordings later). Default: `./veza-data`.
    pub data_dir: PathBuf,
    pub http: HttpConfig,
    pub media: MediaConfig,
    pub auth: AuthConfig,
    pub sessions: SessionsConfig,
    pub chat: ChatConfig,
    /// STUN/TURN servers handed to clients in `joined`, as browsers take them. Default: none.
    pub ice_servers: Vec<IceServer>,
    /// The coturn beside this server: URIs and the shared secret ephemeral credentials are
    /// minted with (`src/turn.rs`). Default: none.
    pub turn: crate::turn::TurnConfig,
    /// On SIGTERM/SIGINT the server stops taking joins and waits this long at most for the
    /// last participant to leave before exiting. Default: 10 min.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Signed event notifications POSTed to the Veza API (`src/webhook.rs`). Default: none.
    pub webhooks: crate::webhook::WebhooksConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// HTTP listener (signaling, REST, health, static client). Default: 0.0.0.0:7880 (dev: 127.0.0.1:7880).
    pub listen: SocketAddr,
    /// Directory of the reference web client served at `/`. Default: `static`.
    pub static_dir: PathBuf,
    /// Largest signaling message accepted, in bytes; larger ones get `message_too_large`. Default: 64 KiB.
    pub max_message_bytes: usize,
    /// Sustained signaling messages per second one client may send; the excess gets
    /// `rate_limited` and is dropped. Default: 20.
    pub messages_per_second: f64,
    /// Messages a client may send in a burst above the rate (ICE candidates come in bursts);
    /// a client that keeps sending this many more while limited is disconnected. Default: 100.
    pub message_burst: u32,
    /// Interval of WebSocket pings to each client. Default: 15 s.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// A signaling socket silent for this long is closed and its participant leaves. Default: 45 s.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Server messages queued for one client before it counts as too slow and is dropped. Default: 256.
    pub outbound_queue: usize,
    /// Signaling connection attempts (`GET /v1/ws`, good token or not) one client address may
    /// make per minute; the excess gets HTTP 429 `join_rate_limited`. 0 means no limit. Default: 30.
    pub join_attempts_per_minute: u32,
    /// Header carrying the client's address when a reverse proxy sits in front (e.g.
    /// `X-Forwarded-For`: its last entry, the one the proxy appended, is used). Without it
    /// behind a proxy, every client shares the proxy's allowance. Default: none (the TCP peer).
    pub client_ip_header: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Address the media UDP sockets bind to. Default: 0.0.0.0 (dev: 127.0.0.1).
    pub bind_ip: IpAddr,
    /// First media UDP port; worker `n` listens on `udp_port + n`. Default: 7882.
    pub udp_port: u16,
    /// Media worker threads; 0 means one per CPU core. Default: 0.
    pub workers: usize,
    /// Addresses announced as ICE host candidates (public IP / NAT 1:1). Default: the bind
    /// address, or every non-loopback interface address when bound to a wildcard.
    pub announce_ips: Vec<IpAddr>,
    /// Opus `maxaveragebitrate` asked of senders, in bit/s. Default: 128000.
    pub max_average_bitrate: u32,
    /// Opus packet duration asked of senders, in ms (`minptime`). Default: 10.
    pub ptime_ms: u32,
    /// Run ICE as a lite agent (answers checks, never sends them). Default: false.
    pub ice_lite: bool,
    /// ICE: no traffic for this long marks a connection disconnected. Default: 5 s.
    #[serde(with = "humantime_serde")]
    pub ice_disconnected_timeout: Duration,
    /// ICE: no traffic for this long fails the connection; the participant leaves. Default: 15 s.
    #[serde(with = "humantime_serde")]
    pub ice_failed_timeout: Duration,
    /// ICE keepalive interval. Default: 2 s.
    #[serde(with = "humantime_serde")]
    pub ice_keepalive_interval: Duration,
    /// Kernel receive buffer of each worker socket, in bytes: one socket carries every
    /// connection's bursts. Default: 8 MiB.
    pub socket_buffer_bytes: usize,
    /// Largest SDP accepted from a client, in bytes. Default: 32 KiB.
    pub max_sdp_bytes: usize,
    /// Audio tracks one participant may publish (an instrument and a mic). Default: 2.
    pub max_tracks_per_participant: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// JWT algorithm, pinned: `HS256`, `RS256` or `EdDSA`. Default: HS256.
    pub algorithm: String,
    /// HS256 shared secret (the Go API's signing secret). Default: none (dev: generated).
    pub secret: Option<String>,
    /// RS256/EdDSA public key, PEM text. Default: none.
    pub public_key_pem: Option<String>,
    /// RS256/EdDSA public key, path to a PEM file. Default: none.
    pub public_key_file: Option<PathBuf>,
    /// Required `iss`, when set. Default: none.
    pub issuer: Option<String>,
    /// Required `aud`, when set. Default: none.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp`/`nbf`. Default: 30 s.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Longest token accepted, in bytes; longer ones get `token_too_large` without being
    /// decoded. Default: 8 KiB.
    pub max_token_bytes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    /// Create a session when the first participant's token names it. Default: true.
    pub auto_create: bool,
    /// Participants per session. Default: 16.
    pub max_participants: usize,
    /// Live sessions this node hosts at most; joins that would start another one, and
    /// `POST /v1/sessions`, get `server_full`. Default: 500.
    pub max_sessions: usize,
    /// A participant whose signaling socket drops (without `leave` or a close frame) keeps its
    /// place, media and routes this long, waiting for a reconnect with `?resume=`; the others
    /// see no leave. 0 turns resuming off. Default: 10 s.
    #[serde(with = "humantime_serde")]
    pub reconnect_grace: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatConfig {
    /// Longest chat message, in characters. Default: 2000.
    pub max_chars: usize,
    /// Sustained chat messages per second per participant. Default: 10.
    pub rate_per_second: f64,
    /// Messages a participant may send in a burst above the rate. Default: 10.
    pub burst: u32,
    /// Messages kept per session for late joiners. Default: 200.
    pub history: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            dev: false,
            data_dir: PathBuf::from("veza-data"),
            http: HttpConfig::default(),
            media: MediaConfig::default(),
            auth: AuthConfig::default(),
            sessions: SessionsConfig::default(),
            chat: ChatConfig::default(),
            ice_servers: Vec::new(),
            turn: crate::turn::TurnConfig::default(),
            drain_timeout: Duration::from_secs(600),
            webhooks: crate::webhook::WebhooksConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 7880)),
            static_dir: PathBuf::from("static"),
            max_message_bytes: 64 * 1024,
            messages_per_second: 20.0,
            message_burst: 100,
            keepalive_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            outbound_queue: 256,
            join_attempts_per_minute: 30,
            client_ip_header: None,
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            udp_port: 7882,
            workers: 0,
            announce_ips: Vec::new(),
            max_average_bitrate: 128_000,
            ptime_ms: 10,
            ice_lite: false,
            ice_disconnected_timeout: Duration::from_secs(5),
            ice_failed_timeout: Duration::from_secs(15),
            ice_keepalive_interval: Duration::from_secs(2),
            socket_buffer_bytes: 8 * 1024 * 1024,
            max_sdp_bytes: 32 * 1024,
            max_tracks_per_participant: 2,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            algorithm: "HS256".to_owned(),
            secret: None,
            public_key_pem: None,
            public_key_file: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
            max_token_bytes: 8 * 1024,
        }
    }
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            auto_create: true,
            max_participants: 16,
            max_sessions: 500,
            reconnect_grace: Duration::from_secs(10),
        }
    }
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig { max_chars: 2000, rate_per_second: 10.0, burst: 10, history: 200 }
    }
}

/// Top-level keys of [`Config`], as environment variables name them.
const SECTIONS: &[&str] = &[
    "dev",
    "data_dir",
    "http",
    "media",
    "auth",
    "sessions",
    "chat",
    "ice_servers",
    "turn",
    "drain_timeout",
    "webhooks",
];

impl Config {
    /// The defaults for dev mode: loopback only.
    pub fn dev_defaults() -> Config {
        let mut c = Config { dev: true, ..Config::default() };
        c.http.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 7880));
        c.media.bind_ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        c
    }

    /// Loads defaults (dev or production) < the TOML file, if given < `VEZA_*` env.
    /// Nested keys use `__` in env names: `VEZA_HTTP__LISTEN=0.0.0.0:8080`.
    pub fn load(dev: bool, file: Option<&Path>) -> Result<Config, Box<figment::Error>> {
        let defaults = if dev { Config::dev_defaults() } else { Config::default() };
        let mut fig = Figment::from(Serialized::defaults(defaults));
        if let Some(f) = file {
            fig = fig.merge(Toml::file_exact(f));
        }
        // Only our own sections: other VEZA_* variables (a sidecar's, or the ones Kubernetes
        // derives from a service named veza-sfu) are not configuration. Unknown keys inside
        // a section still fail, so typos do not pass silently.
        let ours = |key: &figment::value::UncasedStr| {
            let section = key.as_str().split("__").next().unwrap_or_default().to_ascii_lowercase();
            SECTIONS.contains(&section.as_str())
        };
        fig = fig.merge(Env::prefixed("VEZA_").filter(ours).split("__"));
        let mut config: Config = fig.extract().map_err(Box::new)?;
        config.dev |= dev;
        config.check().map_err(|e| Box::new(figment::Error::from(e)))?;
        Ok(config)
    }

    /// Values that parse but cannot work: a limit of nothing would refuse every join or hold a
    /// place nobody can take, and a zero rate would stall every client.
    pub fn check(&self) -> Result<(), String> {
        let mut wrong = Vec::new();
        let mut at_least = |name: &str, value: usize, min: usize| {
            if value < min {
                wrong.push(format!("{name} must be at least {min}, got {value}"));
            }
        };
        at_least("sessions.max_participants", self.sessions.max_participants, 1);
        at_least("sessions.max_sessions", self.sessions.max_sessions, 1);
        at_least("media.max_tracks_per_participant", self.media.max_tracks_per_participant, 1);
        // Below a few KiB not even a one-track offer or its ICE candidates fit.
        at_least("http.max_message_bytes", self.http.max_message_bytes, 4096);
        at_least("media.max_sdp_bytes", self.media.max_sdp_bytes, 2048);
        at_least("http.outbound_queue", self.http.outbound_queue, 1);
        at_least("chat.max_chars", self.chat.max_chars, 1);
        at_least("auth.max_token_bytes", self.auth.max_token_bytes, 256);
        for (name, rate) in [
            ("http.messages_per_second", self.http.messages_per_second),
            ("chat.rate_per_second", self.chat.rate_per_second),
        ] {
            if !(rate.is_finite() && rate > 0.0) {
                wrong.push(format!("{name} must be a positive number, got {rate}"));
            }
        }
        if ![10, 20, 40, 60].contains(&self.media.ptime_ms) {
            wrong.push(format!("media.ptime_ms must be 10, 20, 40 or 60, got {}", self.media.ptime_ms));
        }
        if self.media.ice_failed_timeout < self.media.ice_disconnected_timeout {
            wrong.push("media.ice_failed_timeout must not be shorter than media.ice_disconnected_timeout".to_owned());
        }
        if wrong.is_empty() { Ok(()) } else { Err(wrong.join("; ")) }
    }

    /// Number of media workers to run.
    pub fn worker_count(&self) -> usize {
        if self.media.workers > 0 {
            self.media.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// The fmtp line of our Opus profile: music, not voice.
    pub fn opus_fmtp(&self) -> String {
        format!(
            "minptime={};useinbandfec=1;stereo=1;sprop-stereo=1;maxaveragebitrate={};usedtx=0",
            self.media.ptime_ms, self.media.max_average_bitrate
        )
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures must return figment::Error
mod tests {
    use super::*;

    #[test]
    fn env_overrides_file_overrides_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("veza.toml", "[http]\nlisten = \"127.0.0.1:9000\"\n[chat]\nmax_chars = 5\n")?;
            jail.set_env("VEZA_CHAT__MAX_CHARS", "7");
            jail.set_env("VEZA_SFU_SERVICE_HOST", "10.0.0.1"); // not ours: ignored
            let c = Config::load(false, Some(Path::new("veza.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.http.listen.port(), 9000);
            assert_eq!(c.chat.max_chars, 7);
            assert_eq!(c.chat.history, 200);
            Ok(())
        });
    }

    #[test]
    fn values_that_cannot_work_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("VEZA_SESSIONS__MAX_PARTICIPANTS", "0");
            jail.set_env("VEZA_CHAT__RATE_PER_SECOND", "0");
            let e = Config::load(false, None).expect_err("a session nobody can join").to_string();
            assert!(e.contains("sessions.max_participants must be at least 1, got 0"), "{e}");
            assert!(e.contains("chat.rate_per_second must be a positive number"), "{e}");
            Ok(())
        });
        assert_eq!(Config::default().check(), Ok(()));
        assert_eq!(Config::dev_defaults().check(), Ok(()));
    }

    #[test]
    fn unknown_keys_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("veza.toml", "[http]\nlisten_typo = 1\n")?;
            assert!(Config::load(false, Some(Path::new("veza.toml"))).is_err());
            Ok(())
        });
    }

    #[test]
    fn music_profile_is_stereo_fec_no_dtx() {
        let f = Config::default().opus_fmtp();
        for p in ["stereo=1", "sprop-stereo=1", "useinbandfec=1", "usedtx=0", "minptime=10", "maxaveragebitrate=128000"]
        {
            assert!(f.contains(p), "{f} lacks {p}");
        }
    }
}
