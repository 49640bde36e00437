//! Sessions and participants hosted by one media worker: who is in, what they publish, who
//! hears whom, negotiation of their connections, and chat. Runs on the worker thread only, so
//! it needs no locks; it never touches a socket or the clock (time comes in as `now`).

mod host;
mod participant;
mod quota;

pub use host::{AdminError, Host, HostStats, JoinError, JoinRequest, NewSession, ParticipantView, SessionView};
pub use quota::SessionQuota;
