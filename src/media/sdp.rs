//! What we need to know from a client's SDP before handing it to the WebRTC stack.

/// Whether an offer asks to send audio to us (an `m=audio` section that is sendrecv or sendonly).
/// A section without a direction attribute is sendrecv (RFC 8866 §6.7).
pub fn offers_to_send_audio(sdp: &str) -> bool {
    let mut in_audio = false;
    let mut sends = false;
    for line in sdp.lines().map(str::trim_end) {
        if let Some(media) = line.strip_prefix("m=") {
            if in_audio && sends {
                return true;
            }
            in_audio = media.starts_with("audio ");
            sends = in_audio;
            // A port of 0 rejects the section.
            if in_audio && media.split_whitespace().nth(1) == Some("0") {
                sends = false;
            }
        } else if in_audio && matches!(line, "a=recvonly" | "a=inactive") {
            sends = false;
        }
    }
    in_audio && sends
}

/// Adds `a=ptime` to every audio section of an SDP we produce that lacks one. Browsers size
/// their Opus frames from the remote description's ptime (20 ms when absent); our answer is
/// where a publisher learns we want 10 ms frames.
pub fn with_ptime(sdp: &str, ptime_ms: u32) -> String {
    let mut out = String::with_capacity(sdp.len() + 64);
    let mut in_audio = false;
    let mut has_ptime = false;
    let close_section = |out: &mut String, in_audio: bool, has_ptime: bool| {
        if in_audio && !has_ptime {
            out.push_str(&format!("a=ptime:{ptime_ms}\r\n"));
        }
    };
    for line in sdp.split_inclusive('\n') {
        let trimmed = line.trim_end();
        if trimmed.starts_with("m=") {
            close_section(&mut out, in_audio, has_ptime);
            in_audio = trimmed.starts_with("m=audio ");
            has_ptime = false;
        } else if trimmed.starts_with("a=ptime:") {
            has_ptime = true;
        }
        if !trimmed.is_empty() {
            out.push_str(trimmed);
            out.push_str("\r\n");
        }
    }
    close_section(&mut out, in_audio, has_ptime);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptime_is_added_to_audio_sections_only() {
        let sdp = "v=0\r\nm=audio 9 RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\nm=application 9 x\r\na=mid:1\r\n";
        let out = with_ptime(sdp, 10);
        assert_eq!(out.matches("a=ptime:10").count(), 1);
        assert!(out.find("a=ptime:10").unwrap() < out.find("m=application").unwrap());
        assert_eq!(with_ptime(&out, 10), out, "idempotent");
        let trailing = with_ptime("v=0\r\nm=audio 9 RTP/SAVPF 111\r\n", 10);
        assert!(trailing.ends_with("a=ptime:10\r\n"));
    }

    #[test]
    fn detects_sending_audio_sections() {
        let send = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendrecv\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
        assert!(offers_to_send_audio(send));
        let implicit = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n";
        assert!(offers_to_send_audio(implicit));
        let recv = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=recvonly\r\n";
        assert!(!offers_to_send_audio(recv));
        let rejected = "v=0\r\nm=audio 0 UDP/TLS/RTP/SAVPF 111\r\n";
        assert!(!offers_to_send_audio(rejected));
        let data_only = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
        assert!(!offers_to_send_audio(data_only));
    }
}
