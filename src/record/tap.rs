//! The media worker's side of recording: hands each published packet of a recorded session to
//! the writer thread without blocking, allocating or touching a file. A full queue drops the
//! packet and counts it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Instant;

use bytes::Bytes;

/// Who a recorded track belongs to; one per track, shared by every packet of it.
#[derive(Debug)]
pub struct TrackMeta {
    /// Unique within the recording: names the file.
    pub key: u32,
    pub participant_id: String,
    pub user: String,
    pub name: String,
    pub track_id: String,
    /// Packets of this track dropped because the writer's queue was full.
    pub dropped: AtomicU64,
}

/// One RTP packet on its way to the writer.
pub struct RecPacket {
    pub track: Arc<TrackMeta>,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: Bytes,
    /// When the worker read it (the loop turn's clock).
    pub arrival: Instant,
}

/// An RTCP sender report of a recorded track on its way to the writer (about one a second per
/// track): the sender's NTP wall clock against its RTP clock.
pub struct RecSenderReport {
    pub track: Arc<TrackMeta>,
    /// The SSRC the report describes; the writer files it under the track with that SSRC.
    pub ssrc: u32,
    /// NTP timestamp, 32.32 fixed point seconds since 1900.
    pub ntp_time: u64,
    pub rtp_time: u32,
    /// When the worker read it (the loop turn's clock).
    pub arrival: Instant,
}

/// What goes down a recording's queue.
pub enum RecItem {
    Rtp(RecPacket),
    SenderReport(RecSenderReport),
}

/// The sending end of a recording, created by [`super::Recordings`] and handed to the worker
/// that hosts the session.
#[derive(Clone)]
pub struct RecordingSink {
    pub id: String,
    pub(crate) tx: SyncSender<RecItem>,
}

/// What a session being recorded holds on the worker.
pub struct SessionRecording {
    pub id: String,
    tx: SyncSender<RecItem>,
    next_track: u32,
}

impl SessionRecording {
    pub fn new(sink: RecordingSink) -> SessionRecording {
        SessionRecording { id: sink.id, tx: sink.tx, next_track: 0 }
    }

    /// A tap for one participant of the session (no tracks yet).
    pub fn tap(&self) -> ParticipantTap {
        ParticipantTap { recording: self.id.clone(), tx: self.tx.clone(), tracks: Vec::new() }
    }

    /// Starts recording a track of `tap`'s participant, keyed by the connection's track id.
    pub fn add_track(&mut self, tap: &mut ParticipantTap, remote_id: &str, meta: TrackIdentity<'_>) {
        if tap.tracks.iter().any(|(id, _)| id == remote_id) {
            return;
        }
        self.next_track += 1;
        let meta = TrackMeta {
            key: self.next_track,
            participant_id: meta.participant_id.to_owned(),
            user: meta.user.to_owned(),
            name: meta.name.to_owned(),
            track_id: meta.track_id.to_owned(),
            dropped: AtomicU64::new(0),
        };
        tap.tracks.push((remote_id.to_owned(), Arc::new(meta)));
    }
}

/// Borrowed names of a track's owner, for [`SessionRecording::add_track`].
pub struct TrackIdentity<'a> {
    pub participant_id: &'a str,
    pub user: &'a str,
    pub name: &'a str,
    pub track_id: &'a str,
}

/// Per participant: the recorded tracks of its publisher connection.
pub struct ParticipantTap {
    pub recording: String,
    tx: SyncSender<RecItem>,
    tracks: Vec<(String, Arc<TrackMeta>)>,
}

impl ParticipantTap {
    /// Offers one packet to the writer; never blocks. Returns false if it was dropped.
    #[inline]
    pub fn offer(&self, remote_id: &str, packet: &rtc::rtp::Packet, arrival: Instant) -> bool {
        let Some((_, track)) = self.tracks.iter().find(|(id, _)| id == remote_id) else { return true };
        let rec = RecPacket {
            track: track.clone(),
            sequence: packet.header.sequence_number,
            timestamp: packet.header.timestamp,
            ssrc: packet.header.ssrc,
            payload: packet.payload.clone(),
            arrival,
        };
        match self.tx.try_send(RecItem::Rtp(rec)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                track.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Offers an RTCP sender report of the publisher's `remote_id` track (the track the packet
    /// was routed to; `ssrc` says which track it really describes); never blocks. A full queue
    /// drops it uncounted: the next report comes a second later and packet drops are what the
    /// timeline counts.
    pub fn offer_sender_report(&self, remote_id: &str, ssrc: u32, ntp_time: u64, rtp_time: u32, arrival: Instant) {
        let Some((_, track)) = self.tracks.iter().find(|(id, _)| id == remote_id) else { return };
        let report = RecSenderReport { track: track.clone(), ssrc, ntp_time, rtp_time, arrival };
        let _ = self.tx.try_send(RecItem::SenderReport(report));
    }
}
