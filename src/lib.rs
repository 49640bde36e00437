//! veza-sfu: a selective forwarding unit for musicians jamming live.
//!
//! Layers, from the wire inwards: [`http`] (signaling WebSocket, probes, static client),
//! [`session`] (who is in which session, who hears whom, chat), [`media`] (worker threads,
//! sockets, peer connections and the forwarding hot path in [`media::forward`]).

pub mod auth;
pub mod bench;
pub mod chat;
pub mod config;
pub mod conn_stats;
pub mod dev;
pub mod drain;
pub mod export;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod media;
pub mod openapi;
pub mod record;
pub mod server;
pub mod session;
pub mod sim;
pub mod telemetry;
pub mod turn;
pub mod webhook;

pub use config::Config;
pub use server::Server;
