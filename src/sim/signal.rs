//! Signaling side of a simulated musician: the task reading the WebSocket and the task answering
//! the server's subscriber offers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use veza_signaling::client::{ClientReceiver, ClientSender};
use veza_signaling::{ClientError, ClientMessage, PcTarget, ServerMessage};
use webrtc::peer_connection::{PeerConnection, RTCIceGatheringState, RTCSessionDescription};

use crate::media::sdp::ice_ufrag;

use super::peer;
use super::state::{Shared, lock, within};
use super::stats::offered_tracks;

/// The sending half of the signaling socket; `None` once torn down.
pub(crate) type SignalSender = tokio::sync::Mutex<Option<ClientSender>>;

/// Where the subscriber peer connection lives once the first offer created it.
pub(crate) type PcSlot = Mutex<Option<Arc<dyn PeerConnection>>>;

/// What a [`SignalSender`] can carry.
pub(crate) enum Frame<'a> {
    Message(&'a ClientMessage),
    Raw(&'a str),
}

/// Sends one frame, giving up after `timeout` (a server that stops reading must not hang a test).
pub(crate) async fn send(tx: &SignalSender, frame: Frame<'_>, timeout: Duration) -> anyhow::Result<()> {
    within(timeout, || "the signaling socket to accept a frame".to_owned(), async {
        let mut guard = tx.lock().await;
        let sender = guard.as_mut().context("signaling socket is closed")?;
        match frame {
            Frame::Message(msg) => sender.send(msg).await,
            Frame::Raw(text) => sender.send_text(text).await,
        }
        .context("sending on the signaling socket")
    })
    .await
}

/// Reads server messages until the socket closes: records each one, hands publisher answers to
/// `answers` (while `join` listens) and subscriber offers to `offers` (the negotiation task).
pub(crate) async fn read_loop(
    shared: Arc<Shared>,
    mut rx: ClientReceiver,
    answers: mpsc::UnboundedSender<String>,
    offers: mpsc::UnboundedSender<String>,
) {
    let reason = loop {
        match rx.recv().await {
            Ok(Some(msg)) => {
                match &msg {
                    // Nobody listens for answers after `join`; a late one is only recorded.
                    ServerMessage::Answer { sdp } => _ = answers.send(sdp.clone()),
                    ServerMessage::Offer { sdp } => _ = offers.send(sdp.clone()),
                    ServerMessage::Joined(_) => shared.record_error("second joined message".to_owned()),
                    _ => {}
                }
                shared.push_event(msg);
            }
            Ok(None) => break "server closed the socket".to_owned(),
            // One undecodable frame does not end the stream: note it and keep reading.
            Err(ClientError::Decode(e)) => shared.record_error(format!("undecodable server frame: {e}")),
            Err(e) => break format!("signaling socket failed: {e}"),
        }
    };
    shared.set_signaling_closed(reason);
}

/// Answers the server's subscriber offers one at a time, creating the subscriber peer
/// connection on the first. A failed negotiation is recorded and the next offer tried.
pub(crate) async fn negotiate_subscriber(
    shared: Arc<Shared>,
    tx: Arc<SignalSender>,
    slot: Arc<PcSlot>,
    mut offers: mpsc::UnboundedReceiver<String>,
    fmtp: String,
    net: peer::Network,
    timeout: Duration,
) {
    while let Some(sdp) = offers.recv().await {
        let offered = offered_tracks(&sdp);
        match answer_offer(&shared, &tx, &slot, sdp, &fmtp, &net, timeout).await {
            Ok(()) => {
                shared.set_offered(offered);
                shared.negotiations.send_modify(|n| *n += 1);
            }
            Err(e) => shared.record_error(format!("subscriber negotiation failed: {e:#}")),
        }
    }
}

async fn answer_offer(
    shared: &Arc<Shared>,
    tx: &SignalSender,
    slot: &PcSlot,
    sdp: String,
    fmtp: &str,
    net: &peer::Network,
    timeout: Duration,
) -> anyhow::Result<()> {
    let existing = lock(slot).clone();
    let pc = match existing {
        Some(pc) => pc,
        None => {
            let pc = peer::new_peer_connection(shared.clone(), PcTarget::Subscriber, fmtp, net).await?;
            *lock(slot) = Some(pc.clone());
            pc
        }
    };
    // The server repeats an unanswered offer after a resume (src/http/ws.rs); if it is the one
    // already answered, the answer was lost on the old socket: send it again.
    if let (Some(remote), Some(local)) = (pc.current_remote_description().await, pc.current_local_description().await)
        && remote.sdp == sdp
    {
        return send(tx, Frame::Message(&ClientMessage::Answer { sdp: net.outgoing_sdp(local.sdp) }), timeout).await;
    }
    // New ICE credentials in a re-offer restart ICE: the answer must wait for the new
    // generation's gathering (on new sockets), not the one that completed long ago.
    let current = pc.remote_description().await;
    let restart = current.is_some_and(|c| ice_ufrag(&c.sdp) != ice_ufrag(&sdp));
    if restart {
        shared.subscriber.gathering.send_replace(RTCIceGatheringState::New);
    }
    let offer = RTCSessionDescription::offer(sdp).context("parsing the server's offer")?;
    pc.set_remote_description(offer).await.context("applying the server's offer")?;
    let answer = pc.create_answer(None).await.context("creating an answer")?;
    pc.set_local_description(answer).await.context("applying the answer")?;
    // Candidates travel inside the SDP, so the answer waits for gathering (a no-op after the
    // first negotiation, which gathers once for good).
    within(timeout, || "subscriber ICE gathering".to_owned(), shared.subscriber.gathered()).await?;
    let local = pc.local_description().await.context("no local description after answering")?;
    send(tx, Frame::Message(&ClientMessage::Answer { sdp: net.outgoing_sdp(local.sdp) }), timeout).await
}
