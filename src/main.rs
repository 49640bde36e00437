//! The `veza-sfu` command line: serve, and mint tokens for development and tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use veza_sfu::auth::{Identity, Minter};
use veza_sfu::{Config, Server, dev};
use veza_signaling::Grants;

#[derive(Parser)]
#[command(name = "veza-sfu", version, about = "Veza's real-time audio SFU for musicians")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ConfigArgs {
    /// TOML configuration file (defaults < file < VEZA_* environment).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Development mode: no configuration needed, loopback only, generated secret.
    #[arg(long)]
    dev: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        /// HTTP listen address (default 127.0.0.1:7880 in dev, 0.0.0.0:7880 otherwise).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// First media UDP port (default 7882).
        #[arg(long)]
        udp_port: Option<u16>,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        log_json: bool,
    },
    /// Measure forwarding under load: starts a server, joins simulated musicians, reports.
    Bench(veza_sfu::bench::BenchArgs),
    /// Leak hunt: a long run of churn, chat and recording, sampling the server's memory, file
    /// descriptors, threads and tasks; exits with status 3 if one of them grows.
    Soak(veza_sfu::bench::soak::SoakArgs),
    /// Export a recording directory (data_dir/recordings/SESSION/ID) to aligned stems or a mix.
    Export(veza_sfu::export::cli::ExportArgs),
    /// Benchmark export: a synthetic multi-musician recording to FLAC stems, next to ffmpeg.
    BenchExport(veza_sfu::export::bench::BenchExportArgs),
    /// Mint a participant token (or with --admin a service token for the REST API) with the
    /// configured HS256 secret (or the dev secret).
    Token {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long, required_unless_present = "admin")]
        session: Option<String>,
        #[arg(long, required_unless_present = "admin")]
        user: Option<String>,
        /// A service token: `admin` grant, no session; for the REST API only.
        #[arg(long, conflicts_with = "session")]
        admin: bool,
        /// Grant `record`: start/stop recording from signaling, export and download over REST.
        #[arg(long)]
        record: bool,
        /// Display name (default: the user id).
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        no_publish: bool,
        #[arg(long)]
        no_subscribe: bool,
        #[arg(long)]
        no_chat: bool,
        /// Lifetime, e.g. 30m, 1h, 2d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

/// glibc's malloc, left to itself, kept what a long-running server freed: the soak's live heap
/// stayed at 4-7 MB while RSS climbed ~22 MiB/h, in steps at each recording and export. It
/// raises its mmap threshold to the largest block freed so far, so an export's big buffers come
/// back from the heap instead of `mmap` and stay there, and every thread that allocates gets an
/// arena of its own. A fixed threshold returns large blocks to the system when freed; two arenas
/// keep the rest packed (small allocations are served from per-thread caches without taking an
/// arena lock either way). Before any thread starts.
fn tame_glibc_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, listen, udp_port, log_json } => {
            tame_glibc_malloc();
            init_logging(log_json);
            let mut cfg = load(&config)?;
            if let Some(listen) = listen {
                cfg.http.listen = listen;
            }
            if let Some(port) = udp_port {
                cfg.media.udp_port = port;
            }
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve(cfg))
        }
        Command::Bench(args) => {
            // Before the runtime starts: its threads inherit the generator's CPU.
            let placement = veza_sfu::bench::Placement::apply(args.no_pin);
            let report = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(veza_sfu::bench::run(&args, placement))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
            Ok(())
        }
        Command::Soak(args) => {
            let report = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(veza_sfu::bench::soak::run(&args))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
            if report.growing() {
                // Distinct from 1 (the run failed) and 2 (clap: bad arguments): a script can tell a leak apart.
                std::process::exit(3);
            }
            Ok(())
        }
        Command::Export(args) => veza_sfu::export::cli::run(&args),
        Command::BenchExport(args) => veza_sfu::export::bench::run(&args),
        Command::Token { config, session, user, admin, record, name, no_publish, no_subscribe, no_chat, ttl } => {
            let cfg = load(&config)?;
            if admin {
                let sub = user.unwrap_or_else(|| "veza-api".to_owned());
                println!("{}", minter(&cfg)?.mint_admin(&sub, ttl)?);
                return Ok(());
            }
            let (Some(session), Some(user)) = (session, user) else { bail!("--session and --user are required") };
            let identity = Identity {
                name: name.unwrap_or_else(|| user.clone()),
                user,
                session,
                grants: Grants { publish: !no_publish, subscribe: !no_subscribe, chat: !no_chat, record, admin: false },
            };
            println!("{}", mint(&cfg, &identity, ttl)?);
            Ok(())
        }
    }
}

fn load(args: &ConfigArgs) -> anyhow::Result<Config> {
    Config::load(args.dev, args.config.as_deref()).map_err(|e| anyhow::anyhow!("configuration: {e}"))
}

/// webrtc-rs logs expected protocol races (a STUN check before the answer, ...) as warnings.
const DEFAULT_LOG_FILTER: &str =
    "info,rtc=error,rtc_ice=error,rtc_dtls=error,rtc_sctp=error,rtc_srtp=error,webrtc=error";

fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Mints with the configured secret, else the dev secret a dev server left in `data_dir`.
fn mint(cfg: &Config, identity: &Identity, ttl: Duration) -> anyhow::Result<String> {
    Ok(minter(cfg)?.mint(identity, ttl)?)
}

fn minter(cfg: &Config) -> anyhow::Result<Minter> {
    let mut auth = cfg.auth.clone();
    if auth.secret.is_none() {
        auth.secret = dev::read_secret(&cfg.data_dir)?;
    }
    if auth.secret.is_none() {
        bail!(
            "no HS256 secret: set auth.secret (VEZA_AUTH__SECRET) or run `veza-sfu serve --dev` here first \
             (it keeps its secret in {})",
            dev::secret_path(&cfg.data_dir).display()
        );
    }
    Ok(Minter::from_config(&auth)?)
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let dev_mode = cfg.dev;
    // Listen before anything is announced: from here on, SIGTERM/SIGINT drain (src/drain.rs).
    let signals = veza_sfu::drain::Signals::new()?;
    let server = Server::start(cfg).await?;
    if dev_mode {
        let identity = Identity {
            user: "dev-user".into(),
            session: "dev-jam".into(),
            name: "Dev Musician".into(),
            // The dev musician may record too, so the Record button shows in the client.
            grants: Grants { record: true, ..Grants::default() },
        };
        let token = mint(&server.config, &identity, Duration::from_secs(24 * 3600))?;
        println!("veza-sfu is running in dev mode.");
        println!("Open the reference client: {}/?token={token}", server.http_url());
        println!(
            "More musicians: veza-sfu token --dev --session dev-jam --user NAME  (then {}/?token=...)",
            server.http_url()
        );
    }
    let (drain, timeout) = (server.drain(), server.config.drain_timeout);
    server.run_until(signals.drain(drain, timeout)).await
}
