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

#[cfg(test)]
mod tests {
    use super::*;

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
