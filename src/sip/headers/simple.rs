//! Small typed headers: CSeq (§20.16), Max-Forwards (§20.22), Expires/Min-Expires (§20.19,
//! §20.23), Call-ID (§20.8), Content-Type (§20.15), option-tag lists (Require, Proxy-Require,
//! Supported, Unsupported: §20.32, §20.29, §20.37, §20.40) and Date (§20.17, RFC 1123 in GMT).

use super::params::{only_lws, Params};
use crate::sip::scan::{parse_u64, skip_call_id, trim, CommaSplit, Cursor};

/// `CSeq: 4711 INVITE`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'a> {
    pub seq: u32,
    pub method: &'a [u8],
}

/// Errors of the small parsers: (offset within the value, out-of-range?).
pub type SimpleError = (usize, bool);

impl<'a> CSeq<'a> {
    pub fn parse(v: &'a [u8]) -> Result<CSeq<'a>, SimpleError> {
        match Self::parse_common(v) {
            Some(cseq) => Ok(cseq),
            None => Self::parse_general(v),
        }
    }

    /// The common shape: up to nine digits (so no overflow), one SP, a token to the end.
    /// `None` for anything else, which [`CSeq::parse_general`] then parses.
    #[inline]
    fn parse_common(v: &'a [u8]) -> Option<CSeq<'a>> {
        let mut seq: u32 = 0;
        let mut i = 0;
        while i < 9 && i < v.len() && v[i].is_ascii_digit() {
            seq = seq * 10 + (v[i] - b'0') as u32;
            i += 1;
        }
        if i == 0 || v.get(i) != Some(&b' ') {
            return None;
        }
        let method = &v[i + 1..];
        if !crate::sip::scan::is_token(method) {
            return None;
        }
        Some(CSeq { seq, method })
    }

    fn parse_general(v: &'a [u8]) -> Result<CSeq<'a>, SimpleError> {
        let mut c = Cursor::new(v);
        c.skip_lws();
        let digits = c.take_while(|ch| ch.is_ascii_digit());
        let seq = parse_u64(digits, u32::MAX as u64).map_err(|over| (c.pos, over))? as u32;
        if !c.peek().is_some_and(crate::sip::scan::is_lws) {
            return Err((c.pos, false));
        }
        c.skip_lws();
        let method = c.token().ok_or((c.pos, false))?;
        if !only_lws(c.rest()) {
            return Err((c.pos, false));
        }
        Ok(CSeq { seq, method })
    }
}

/// Parses a decimal header value bounded by `max`.
pub fn parse_number(v: &[u8], max: u64) -> Result<u64, SimpleError> {
    parse_u64(trim(v), max).map_err(|over| (0, over))
}

/// Max-Forwards: 0..=255.
pub fn parse_max_forwards(v: &[u8]) -> Result<u8, SimpleError> {
    parse_number(v, 255).map(|n| n as u8)
}

/// Expires / Min-Expires: delta-seconds up to 2^32-1.
pub fn parse_delta_seconds(v: &[u8]) -> Result<u32, SimpleError> {
    parse_number(v, u32::MAX as u64).map(|n| n as u32)
}

/// Call-ID: `word [ "@" word ]`: word characters with at most one `@`, neither first nor last.
pub fn parse_call_id(v: &[u8]) -> Result<&[u8], SimpleError> {
    let v = trim(v);
    let (end, ats) = skip_call_id(v, 0);
    if end != v.len() || v.is_empty() || ats > 1 || v[0] == b'@' || v[v.len() - 1] == b'@' {
        return Err((0, false));
    }
    Ok(v)
}

/// `Content-Type: type/subtype;params`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentType<'a> {
    pub mtype: &'a [u8],
    pub subtype: &'a [u8],
    pub params: Params<'a>,
}

impl<'a> ContentType<'a> {
    pub fn parse(v: &'a [u8]) -> Result<ContentType<'a>, SimpleError> {
        let mut c = Cursor::new(v);
        c.skip_lws();
        let mtype = c.token().ok_or((c.pos, false))?;
        if !c.eat_sep(b'/') {
            return Err((c.pos, false));
        }
        let subtype = c.token().ok_or((c.pos, false))?;
        let params = Params::scan(&mut c).map_err(|e| (e, false))?;
        if !only_lws(c.rest()) {
            return Err((c.pos, false));
        }
        Ok(ContentType {
            mtype,
            subtype,
            params,
        })
    }

    /// True for `application/sdp` (case-insensitive).
    pub fn is_sdp(&self) -> bool {
        self.mtype.eq_ignore_ascii_case(b"application") && self.subtype.eq_ignore_ascii_case(b"sdp")
    }
}

/// Iterates a comma-separated list of tokens (option tags, methods). Yields Err(offset) for
/// an element that is not a token. An empty header value yields nothing.
pub fn token_list(v: &[u8]) -> impl Iterator<Item = Result<&[u8], usize>> {
    let empty = trim(v).is_empty();
    CommaSplit::new(v).filter(move |_| !empty).map(|(off, t)| {
        if crate::sip::scan::is_token(t) {
            Ok(t)
        } else {
            Err(off)
        }
    })
}

/// Checks an RFC 1123 date in GMT: `Sat, 13 Nov 2010 23:29:00 GMT`.
pub fn check_date(v: &[u8]) -> Result<(), SimpleError> {
    let v = trim(v);
    let bad = Err((0, false));
    if v.len() != 29 {
        return bad;
    }
    const DAYS: [&[u8]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
    const MONTHS: [&[u8]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let digits = |r: core::ops::Range<usize>| v[r].iter().all(u8::is_ascii_digit);
    if !DAYS.contains(&&v[0..3])
        || &v[3..5] != b", "
        || !digits(5..7)
        || v[7] != b' '
        || !MONTHS.contains(&&v[8..11])
        || v[11] != b' '
        || !digits(12..16)
        || v[16] != b' '
        || !digits(17..19)
        || v[19] != b':'
        || !digits(20..22)
        || v[22] != b':'
        || !digits(23..25)
        || &v[25..29] != b" GMT"
    {
        return bad;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cseq() {
        let c = CSeq::parse(b"0009\r\n  INVITE").unwrap();
        assert_eq!(c.seq, 9);
        assert_eq!(c.method, b"INVITE");
        assert_eq!(
            CSeq::parse(b"36893488147419103232 REGISTER"),
            Err((20, true))
        );
        assert!(CSeq::parse(b"1INVITE").is_err());
        assert!(CSeq::parse(b"1 INVITE x").is_err());
    }

    #[test]
    fn numbers_and_ids() {
        assert_eq!(parse_max_forwards(b"0068"), Ok(68));
        assert_eq!(parse_max_forwards(b"300"), Err((0, true)));
        assert_eq!(parse_delta_seconds(b"10000000000"), Err((0, true)));
        assert!(parse_call_id(b"a@b@c").is_err());
        assert!(parse_call_id(br#"intmeth.word%ZK-!.*_+'@word`~)(><:\/"][?}{"#).is_ok());
        assert!(parse_call_id(b"has space").is_err());
    }

    /// The common-shape CSeq path returns only what the general code returns.
    #[test]
    fn cseq_common_matches_general() {
        let seeds: [&[u8]; 5] = [
            b"1 INVITE",
            b"4294967295 ACK",
            b"123456789 REGISTER",
            b" 7  BYE ",
            b"00000000001 X",
        ];
        let alphabet = b"0123456789 \t\r\nAZaz-.!%*_+`'~@:;\x80\x00";
        let mut m = crate::sip::mutate::Mutator::new(0x9e37_79b9_7f4a_7c15);
        let (mut checked, mut fast) = (0, 0);
        for seed in seeds {
            for round in 0..8000 {
                let v = m.mutated(seed, round % 4, alphabet);
                let general = CSeq::parse_general(&v);
                if let Some(c) = CSeq::parse_common(&v) {
                    assert_eq!(Ok(c), general, "{:?}", String::from_utf8_lossy(&v));
                    fast += 1;
                }
                assert_eq!(CSeq::parse(&v), general);
                checked += 1;
            }
        }
        assert!(
            fast > checked / 10 && fast < checked * 9 / 10,
            "{fast} of {checked}"
        );
    }

    #[test]
    fn dates() {
        assert!(check_date(b"Sat, 13 Nov 2010 23:29:00 GMT").is_ok());
        assert!(check_date(b"Fri, 01 Jan 2010 16:00:00 EST").is_err());
    }

    #[test]
    fn tokens() {
        let v: Vec<_> = token_list(b"100rel , timer").collect();
        assert_eq!(v, vec![Ok(&b"100rel"[..]), Ok(&b"timer"[..])]);
        assert!(token_list(b"a b").any(|r| r.is_err()));
        assert_eq!(token_list(b"").count(), 0);
    }

    #[test]
    fn content_type() {
        let c = ContentType::parse(b"application/SDP ; charset=x").unwrap();
        assert!(c.is_sdp());
        assert!(ContentType::parse(b"application").is_err());
    }
}
