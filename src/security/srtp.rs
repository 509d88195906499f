//! The SRTP policy (an option, `security.require_srtp`): an INVITE, re-INVITE or UPDATE whose
//! SDP offer (RFC 4566 `m=` lines) has no active stream over a secure profile gets 488 Not
//! Acceptable Here. Secure profiles: RTP/SAVP (RFC 3711), RTP/SAVPF (RFC 5124) and their DTLS
//! forms UDP/TLS/RTP/SAVP(F) (RFC 5764). The SDP is only read when the policy is on; a request
//! without an SDP body (a delayed offer) is not judged here.

/// True when `content_type` is SDP and `body` offers only plain (non-SRTP) media: refuse it.
pub fn refuses(content_type: Option<&[u8]>, body: &[u8]) -> bool {
    let is_sdp = content_type.is_some_and(|t| {
        let t = t.split(|&b| b == b';').next().unwrap_or(t).trim_ascii();
        t.eq_ignore_ascii_case(b"application/sdp")
    });
    if !is_sdp || body.is_empty() {
        return false;
    }
    let mut streams = 0;
    for line in body.split(|&b| b == b'\n') {
        let Some(m) = line.strip_prefix(b"m=") else {
            continue;
        };
        // m=<media> <port>[/<n>] <proto> <fmt> ...
        let mut fields = m
            .trim_ascii()
            .split(|&b| b == b' ')
            .filter(|f| !f.is_empty());
        let (_, port, proto) = (fields.next(), fields.next(), fields.next());
        let (Some(port), Some(proto)) = (port, proto) else {
            continue;
        };
        // Port 0: a stream refused or removed, not offered.
        if port.split(|&b| b == b'/').next() == Some(b"0") {
            continue;
        }
        streams += 1;
        let secure = proto.len() >= 4 && {
            let tail = &proto[proto.len() - 4..];
            tail.eq_ignore_ascii_case(b"SAVP")
                || (proto.len() >= 5 && proto[proto.len() - 5..].eq_ignore_ascii_case(b"SAVPF"))
        };
        if secure {
            return false;
        }
    }
    streams > 0
}

#[cfg(test)]
mod tests {
    use super::refuses;

    const SDP: Option<&[u8]> = Some(b"application/sdp");

    fn sdp(m: &str) -> Vec<u8> {
        format!("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n{m}")
            .into_bytes()
    }

    #[test]
    fn plain_rtp_is_refused_srtp_and_dtls_srtp_pass() {
        assert!(refuses(SDP, &sdp("m=audio 4000 RTP/AVP 0 8\r\n")));
        assert!(refuses(
            SDP,
            &sdp("m=audio 4000 RTP/AVPF 0\r\nm=video 4002 RTP/AVP 96\r\n")
        ));
        assert!(!refuses(SDP, &sdp("m=audio 4000 RTP/SAVP 0\r\n")));
        assert!(!refuses(SDP, &sdp("m=audio 4000 RTP/SAVPF 111\r\n")));
        assert!(!refuses(SDP, &sdp("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n")));
        // One secure stream is enough (a client offering both, RFC 5939-style).
        assert!(!refuses(
            SDP,
            &sdp("m=audio 4000 RTP/AVP 0\r\nm=audio 4002 RTP/SAVP 0\r\n")
        ));
        // A plain stream at port 0 is not offered.
        assert!(!refuses(
            SDP,
            &sdp("m=audio 0 RTP/AVP 0\r\nm=audio 4002 RTP/SAVP 0\r\n")
        ));
        assert!(
            !refuses(SDP, &sdp("m=audio 0 RTP/AVP 0\r\n")),
            "no stream offered"
        );
    }

    #[test]
    fn only_sdp_bodies_are_judged() {
        assert!(!refuses(None, &sdp("m=audio 4000 RTP/AVP 0\r\n")));
        assert!(!refuses(
            Some(b"text/plain"),
            &sdp("m=audio 4000 RTP/AVP 0\r\n")
        ));
        assert!(!refuses(SDP, b""), "a delayed offer");
        assert!(refuses(
            Some(b"Application/SDP; charset=utf-8"),
            &sdp("m=audio 4000 RTP/AVP 0\r\n")
        ));
    }
}
