//! Starting and stopping a whole server: media workers plus the HTTP listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::auth::Verifier;
use crate::config::Config;
use crate::http::{self, AppState};
use crate::media::MediaEngine;
use crate::session::HostStats;

/// Counted by the signaling layer (src/http/ws.rs, src/http/resume.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalingStats {
    /// Participations with a signaling task: attached to a socket or parked.
    pub participations: usize,
    /// Participations whose socket dropped, waiting for a reconnect.
    pub parked: usize,
}

/// A running server. Dropping it does not stop it; call [`Server::shutdown`].
pub struct Server {
    pub http_addr: SocketAddr,
    pub config: Arc<Config>,
    pub media: Arc<MediaEngine>,
    ready: Arc<AtomicBool>,
    drain: Arc<crate::drain::Drain>,
    resumable: Arc<http::Resumable>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Binds everything and starts serving. In dev mode, fills in the dev secret first.
    pub async fn start(mut config: Config) -> anyhow::Result<Server> {
        if config.dev && config.auth.secret.is_none() && config.auth.algorithm == "HS256" {
            config.auth.secret = Some(crate::dev::ensure_secret(&config.data_dir).context("creating the dev secret")?);
        }
        config.turn.validate()?;
        crate::telemetry::install();
        let verifier = Arc::new(Verifier::from_config(&config.auth)?);
        let media = Arc::new(MediaEngine::start(&config).context("starting media workers")?);
        let webhooks = crate::webhook::Webhooks::start(&config.webhooks).context("starting webhooks")?;
        media.attach_webhooks(&webhooks).await;
        let exports = Arc::new(crate::export::jobs::Exports::default());
        let _ = exports.webhooks.set(webhooks.clone());
        let listener = tokio::net::TcpListener::bind(config.http.listen)
            .await
            .with_context(|| format!("binding HTTP listener {}", config.http.listen))?;
        let http_addr = listener.local_addr()?;
        let config = Arc::new(config);
        let ready = Arc::new(AtomicBool::new(true));
        let drain = Arc::new(crate::drain::Drain::new(ready.clone()));
        let resumable = Arc::new(http::Resumable::default());
        let joins = Arc::new(http::JoinLimiter::new(
            config.http.join_attempts_per_minute,
            config.http.client_ip_header.clone(),
        ));
        let state = AppState {
            config: config.clone(),
            verifier,
            media: media.clone(),
            ready: ready.clone(),
            drain: drain.clone(),
            recordings: Arc::new(crate::record::Recordings::new(&config.data_dir)),
            exports,
            webhooks,
            resumable: resumable.clone(),
            joins,
        };
        let app = http::router(state)
            .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(http::request_span as fn(&_) -> _));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        tracing::info!(%http_addr, "HTTP listening");
        Ok(Server { http_addr, config, media, ready, drain, resumable, stop: Some(stop), task })
    }

    /// The signaling URL, e.g. `ws://127.0.0.1:7880/v1/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.http_addr)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    pub async fn stats(&self) -> HostStats {
        self.media.stats().await
    }

    /// What the signaling layer holds: live participations (attached or waiting for a resume)
    /// and those whose socket dropped.
    pub fn signaling_stats(&self) -> SignalingStats {
        SignalingStats { participations: self.resumable.len(), parked: self.resumable.parked() }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// The drain state: [`crate::drain::Drain::start`] refuses joins and tells participants.
    pub fn drain(&self) -> Arc<crate::drain::Drain> {
        self.drain.clone()
    }

    /// Serves until `stop` completes (then shuts down) or the HTTP server fails.
    pub async fn run_until(mut self, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        tokio::select! {
            ended = &mut self.task => {
                ended??;
                Ok(())
            }
            () = stop => self.shutdown().await,
        }
    }

    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await??;
        Ok(())
    }
}
