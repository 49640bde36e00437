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

/// The ICE username fragment an SDP carries (its first `a=ice-ufrag`; with BUNDLE every section
/// has the same one). The stack picks our ufrag, and picks a new one on every ICE restart: the
/// description we send is where the demultiplexer learns it.
pub fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines().find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:")).filter(|u| !u.is_empty())
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

/// Puts our music profile into the Opus `a=fmtp` lines of an answer we produce: the WebRTC
/// stack answers with the offerer's parameters, so without this a publisher would never learn
/// that we want stereo, 128 kbit/s and no DTX. Our parameters win over the offer's.
pub fn with_music_fmtp(sdp: &str, ours: &str) -> String {
    let opus_pts: Vec<&str> = sdp
        .lines()
        .filter_map(|l| l.strip_prefix("a=rtpmap:"))
        .filter_map(|rest| rest.split_once(' '))
        .filter(|(_, codec)| codec.to_ascii_lowercase().starts_with("opus/48000"))
        .map(|(pt, _)| pt)
        .collect();
    let mut out = String::with_capacity(sdp.len() + 128);
    for line in sdp.split_inclusive('\n') {
        let trimmed = line.trim_end();
        let fmtp = trimmed.strip_prefix("a=fmtp:").and_then(|rest| rest.split_once(' '));
        match fmtp {
            Some((pt, theirs)) if opus_pts.contains(&pt) => {
                out.push_str(&format!("a=fmtp:{pt} {}\r\n", merge_params(theirs, ours)));
            }
            _ => {
                out.push_str(trimmed);
                out.push_str("\r\n");
            }
        }
    }
    out
}

/// `a=1;b=2` merged with `b=3;c=4` gives `a=1;b=3;c=4`.
fn merge_params(theirs: &str, ours: &str) -> String {
    let mut params: Vec<(String, String)> = Vec::new();
    for p in theirs.split(';').chain(ours.split(';')).map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        match params.iter_mut().find(|(key, _)| key.eq_ignore_ascii_case(k)) {
            Some(existing) => existing.1 = v.to_owned(),
            None => params.push((k.to_owned(), v.to_owned())),
        }
    }
    params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_ufrag_is_the_first_one_and_never_empty() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:abcd\r\na=ice-pwd:x\r\nm=application 9\r\na=ice-ufrag:abcd\r\n";
        assert_eq!(ice_ufrag(sdp), Some("abcd"));
        assert_eq!(ice_ufrag("v=0\r\na=ice-ufrag:\r\n"), None);
        assert_eq!(ice_ufrag("v=0\r\n"), None);
    }

    #[test]
    fn music_fmtp_overrides_the_offerers_opus_parameters_only() {
        let answer = "v=0\r\nm=audio 9 RTP/SAVPF 111 9\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1;usedtx=1\r\na=rtpmap:9 G722/8000\r\na=fmtp:9 x=1\r\n";
        let out = with_music_fmtp(answer, "stereo=1;usedtx=0;maxaveragebitrate=128000");
        assert!(
            out.contains("a=fmtp:111 minptime=10;useinbandfec=1;usedtx=0;stereo=1;maxaveragebitrate=128000\r\n"),
            "{out}"
        );
        assert!(out.contains("a=fmtp:9 x=1\r\n"));
    }

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
