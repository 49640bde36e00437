//! Lets a publisher's RTCP sender reports through to the application.
//!
//! In `rtc` 0.21 inbound RTCP is consumed by the interceptor chain and dropped at its end
//! unless an interceptor marks it [`Attribute::DeliverToApplication`]. Recordings want the
//! sender reports' NTP/RTP pairs (src/record/timeline.rs), so publisher connections mark
//! compound packets holding a `SenderReport`; everything else (receiver reports, SDES and BYE
//! alone) still ends in the chain.
//!
//! [`DeliverSenderReports`] wraps the interceptor a publisher connection has anyway (receiver
//! reports) rather than taking a slot of its own: every interceptor in a chain moves each
//! packet through its own queue, and this one only needs to look at packets going past. The
//! RTP path costs one `matches!` more.

use std::time::Instant;

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::sender_report::SenderReport;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

/// `inner`, with inbound compound RTCP packets that hold a sender report marked for delivery to
/// the application. Sits in `inner`'s slot and behaves as `inner` in every other respect.
pub struct DeliverSenderReports<I> {
    inner: I,
}

impl<I: Interceptor> DeliverSenderReports<I> {
    pub fn new(inner: I) -> DeliverSenderReports<I> {
        DeliverSenderReports { inner }
    }
}

/// Marks `msg` for the application if it is RTCP holding a sender report.
fn mark(msg: &mut TaggedPacket) {
    if let Packet::Rtcp(packets) = &msg.message.packet
        && packets.iter().any(|p| p.as_any().is::<SenderReport>())
        && !msg.message.has(&Attribute::DeliverToApplication)
    {
        msg.message.add(Attribute::DeliverToApplication);
    }
}

impl<I: Interceptor> Protocol<TaggedPacket, TaggedPacket, ()> for DeliverSenderReports<I> {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Error> {
        mark(&mut msg);
        self.inner.handle_read(msg)
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.inner.poll_read()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Error> {
        self.inner.handle_write(msg)
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.inner.poll_write()
    }

    fn handle_event(&mut self, evt: ()) -> Result<(), Error> {
        self.inner.handle_event(evt)
    }

    fn poll_event(&mut self) -> Option<()> {
        self.inner.poll_event()
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), Error> {
        self.inner.handle_timeout(now)
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.inner.poll_timeout()
    }

    fn close(&mut self) -> Result<(), Error> {
        self.inner.close()
    }
}

impl<I: Interceptor> Interceptor for DeliverSenderReports<I> {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        self.inner.bind_local_stream(info)
    }

    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.inner.unbind_local_stream(info)
    }

    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        self.inner.bind_remote_stream(info)
    }

    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        self.inner.unbind_remote_stream(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::interceptor::{AttributedPacket, ReceiverReportBuilder};
    use rtc::rtcp::receiver_report::ReceiverReport;
    use rtc::shared::TransportContext;

    fn tagged(packet: Packet) -> TaggedPacket {
        TaggedPacket { now: Instant::now(), transport: TransportContext::default(), message: packet.into() }
    }

    #[test]
    fn marks_only_compounds_with_a_sender_report() {
        let mut i = DeliverSenderReports::new(ReceiverReportBuilder::new().build());
        let sr = SenderReport { ssrc: 7, ntp_time: 1 << 32, rtp_time: 960, ..Default::default() };
        i.handle_read(tagged(Packet::Rtcp(vec![Box::new(ReceiverReport::default()), Box::new(sr)]))).unwrap();
        i.handle_read(tagged(Packet::Rtcp(vec![Box::new(ReceiverReport::default())]))).unwrap();
        i.handle_read(tagged(Packet::Rtp(Default::default()))).unwrap();
        let out: Vec<AttributedPacket> = std::iter::from_fn(|| i.poll_read()).map(|p| p.message).collect();
        assert_eq!(out.len(), 3);
        assert!(out[0].has(&Attribute::DeliverToApplication));
        assert!(!out[1].has(&Attribute::DeliverToApplication));
        assert!(!out[2].has(&Attribute::DeliverToApplication));
    }
}
