//! The SDP the responder puts in its 200 (RFC 3264 offer/answer, RFC 4566 syntax): an answer
//! built from the offer — one `m=` line per offered stream, in order, with the first offered
//! format and its `a=rtpmap`, the port 0 of a refused stream kept, and the direction mirrored
//! (`sendonly` answered `recvonly`, §6.1) — or, for an INVITE without a body, an offer of
//! PCMU and PCMA audio. No media flows: the ports are nominal.

use std::net::IpAddr;

/// The first media port of the answer; stream `i` gets `MEDIA_PORT + 2 * i`.
const MEDIA_PORT: u32 = 40_000;

/// Writes the answer to `offer` (or an offer, when `offer` has no `m=` line) into `out`, with
/// `ip` as connection address and `session` as the o= session id and version.
pub fn write_answer(out: &mut Vec<u8>, offer: &[u8], ip: IpAddr, session: u64) {
    let mut n = itoa::Buffer::new();
    let (family, ip_text) = match ip {
        IpAddr::V4(v4) => ("IP4", v4.to_string()),
        IpAddr::V6(v6) => ("IP6", v6.to_string()),
    };
    out.extend_from_slice(b"v=0\r\no=sipshard ");
    out.extend_from_slice(n.format(session).as_bytes());
    out.push(b' ');
    out.extend_from_slice(n.format(session).as_bytes());
    out.extend_from_slice(b" IN ");
    out.extend_from_slice(family.as_bytes());
    out.push(b' ');
    out.extend_from_slice(ip_text.as_bytes());
    out.extend_from_slice(b"\r\ns=sipshard\r\nc=IN ");
    out.extend_from_slice(family.as_bytes());
    out.push(b' ');
    out.extend_from_slice(ip_text.as_bytes());
    out.extend_from_slice(b"\r\nt=0 0\r\n");

    let lines = || {
        offer
            .split(|&c| c == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
    };
    // The session-level direction applies to streams that set none.
    let mut session_dir: Option<&[u8]> = None;
    for l in lines() {
        if l.starts_with(b"m=") {
            break;
        }
        if let Some(d) = direction(l) {
            session_dir = Some(d);
        }
    }
    let mut streams = 0u32;
    let mut it = lines().peekable();
    while let Some(l) = it.next() {
        let Some(m) = l.strip_prefix(b"m=") else {
            continue;
        };
        // m=<media> <port> <proto> <fmt> ...
        let mut f = m.split(|&c| c == b' ').filter(|p| !p.is_empty());
        let (Some(media), Some(port), Some(proto)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let fmt = f.next().unwrap_or(b"0");
        // The stream's attributes, up to the next m= line.
        let mut rtpmap: Option<&[u8]> = None;
        let mut dir = session_dir;
        while let Some(a) = it.next_if(|l| !l.starts_with(b"m=")) {
            if let Some(r) = a.strip_prefix(b"a=rtpmap:") {
                let pt = r.split(|&c| c == b' ').next().unwrap_or(b"");
                if pt == fmt && rtpmap.is_none() {
                    rtpmap = Some(a);
                }
            } else if let Some(d) = direction(a) {
                dir = Some(d);
            }
        }
        let refused = port == b"0";
        out.extend_from_slice(b"m=");
        out.extend_from_slice(media);
        out.push(b' ');
        if refused {
            out.push(b'0');
        } else {
            out.extend_from_slice(n.format(MEDIA_PORT + 2 * streams).as_bytes());
        }
        out.push(b' ');
        out.extend_from_slice(proto);
        out.push(b' ');
        out.extend_from_slice(fmt);
        out.extend_from_slice(b"\r\n");
        if let Some(r) = rtpmap {
            out.extend_from_slice(r);
            out.extend_from_slice(b"\r\n");
        }
        let answer_dir: &[u8] = match dir {
            Some(b"sendonly") => b"recvonly",
            Some(b"recvonly") => b"sendonly",
            Some(b"inactive") => b"inactive",
            _ => b"sendrecv",
        };
        out.extend_from_slice(b"a=");
        out.extend_from_slice(answer_dir);
        out.extend_from_slice(b"\r\n");
        streams += 1;
    }
    if streams == 0 {
        out.extend_from_slice(b"m=audio ");
        out.extend_from_slice(n.format(MEDIA_PORT).as_bytes());
        out.extend_from_slice(
            b" RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n",
        );
    }
}

/// The direction an `a=` line sets, if it is one.
fn direction(line: &[u8]) -> Option<&[u8]> {
    let a = line.strip_prefix(b"a=")?;
    matches!(a, b"sendrecv" | b"sendonly" | b"recvonly" | b"inactive").then_some(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(offer: &str) -> String {
        let mut out = Vec::new();
        write_answer(&mut out, offer.as_bytes(), "192.0.2.9".parse().unwrap(), 7);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn answers_each_stream_with_its_first_format() {
        let a = answer(
            "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
             m=audio 6000 RTP/AVP 8 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\n\
             m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n",
        );
        assert_eq!(
            a,
            "v=0\r\no=sipshard 7 7 IN IP4 192.0.2.9\r\ns=sipshard\r\nc=IN IP4 192.0.2.9\r\n\
             t=0 0\r\nm=audio 40000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n\
             m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=sendrecv\r\n"
        );
    }

    #[test]
    fn mirrors_the_direction_of_a_hold() {
        let a = answer("v=0\na=sendonly\nm=audio 6000 RTP/SAVP 0\n");
        assert!(
            a.contains("m=audio 40000 RTP/SAVP 0\r\na=recvonly\r\n"),
            "{a}"
        );
        let a = answer("v=0\nm=audio 6000 RTP/AVP 0\na=inactive\n");
        assert!(a.ends_with("a=inactive\r\n"), "{a}");
    }

    #[test]
    fn offers_audio_when_the_invite_has_no_sdp() {
        let a = answer("");
        assert!(a.contains("m=audio 40000 RTP/AVP 0 8\r\n"), "{a}");
        let mut out = Vec::new();
        write_answer(&mut out, b"", "::1".parse().unwrap(), 1);
        assert!(String::from_utf8(out).unwrap().contains("c=IN IP6 ::1\r\n"));
    }
}
