//! Header parameters: `*( SEMI generic-param )` with `generic-param = token [ EQUAL gen-value ]`
//! and `gen-value = token / host / quoted-string` (RFC 3261 §25.1). LWS is allowed around `;`
//! and `=` (RFC 4475 §3.1.1.1). Validated once when the header is parsed, then iterated lazily.

use crate::sip::scan::{is_lws, is_token_char, skip_value, Cursor};

/// What [`Params::get`] returns: `None` if absent, `Some(None)` if present without a value.
pub type Found<'a> = Option<Option<&'a [u8]>>;

/// A validated parameter list (the raw bytes start at the first `;`, or are empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Params<'a> {
    raw: &'a [u8],
}

#[inline]
fn is_value_char(c: u8) -> bool {
    // token plus what a host may hold: IPv6 references and their colons.
    is_token_char(c) || matches!(c, b'[' | b']' | b':')
}

impl<'a> Params<'a> {
    /// Consumes `*( SEMI generic-param )` from the cursor. Errors on an empty parameter name
    /// (`;;`), a missing value after `=`, or an unterminated quoted string; the cursor is left
    /// after the last parameter (trailing LWS not consumed).
    pub fn scan(c: &mut Cursor<'a>) -> Result<Params<'a>, usize> {
        Self::scan_find(c, b"").map(|(p, _)| p)
    }

    /// [`Params::scan`] that also returns what `get(want)` would, found on the way (the
    /// `tag` of From/To, the `branch` of Via) so that reading it does not scan again.
    /// `want` is lower-case letters (`tag`, `branch`); an empty `want` finds nothing.
    #[inline]
    pub fn scan_find(c: &mut Cursor<'a>, want: &[u8]) -> Result<(Params<'a>, Found<'a>), usize> {
        debug_assert!(want.iter().all(u8::is_ascii_lowercase));
        // No parameters (a To without tag, the end of most values): no call.
        match c.s.get(c.pos) {
            Some(&b) if b == b';' || is_lws(b) => Self::scan_find_list(c, want),
            _ => Ok((
                Params {
                    raw: &c.s[c.pos..c.pos],
                },
                None,
            )),
        }
    }

    #[inline(never)]
    fn scan_find_list(c: &mut Cursor<'a>, want: &[u8]) -> Result<(Params<'a>, Found<'a>), usize> {
        let s = c.s;
        let start = c.pos;
        // `end`: after the last complete parameter.
        let mut end = c.pos;
        let mut found = None;
        loop {
            // The common case has no LWS around `;` and `=`: one byte test each, and the
            // LWS loop only when that byte is LWS.
            let mut semi = end;
            match s.get(semi) {
                Some(b';') => {}
                Some(&b) if is_lws(b) => {
                    semi = skip_lws_at(s, semi + 1);
                    if s.get(semi) != Some(&b';') {
                        break;
                    }
                }
                _ => break,
            }
            let mut name_start = semi + 1;
            if s.get(name_start).is_some_and(|&b| is_lws(b)) {
                name_start = skip_lws_at(s, name_start + 1);
            }
            // Names are short (`tag`, `branch`): byte by byte, cheaper than the set-up of a
            // sixteen-byte scan.
            let mut i = name_start;
            while i < s.len() && is_token_char(s[i]) {
                i += 1;
            }
            if i == name_start {
                return Err(i);
            }
            let name = &s[name_start..i];
            let mut eq = i;
            if s.get(eq).is_some_and(|&b| is_lws(b)) {
                eq = skip_lws_at(s, eq + 1);
            }
            let mut value = None;
            if s.get(eq) == Some(&b'=') {
                let mut v = eq + 1;
                if s.get(v).is_some_and(|&b| is_lws(b)) {
                    v = skip_lws_at(s, v + 1);
                }
                if s.get(v) == Some(&b'"') {
                    let mut q = Cursor { s, pos: v };
                    value = Some(q.quoted().ok_or(v)?);
                    i = q.pos;
                } else {
                    i = skip_value(s, v);
                    if i == v {
                        return Err(v);
                    }
                    value = Some(&s[v..i]);
                }
            }
            // `want` is lower-case letters: OR-ing 0x20 into a byte gives a lower-case letter
            // only for that letter in either case.
            if found.is_none()
                && name.len() == want.len()
                && name.iter().zip(want).all(|(&n, &w)| n | 0x20 == w)
            {
                found = Some(value);
            }
            end = i;
        }
        c.pos = end;
        Ok((
            Params {
                raw: &s[start..end],
            },
            found,
        ))
    }

    /// Iterates (name, value). Quoted values are returned with their quotes removed.
    pub fn iter(&self) -> ParamIter<'a> {
        ParamIter {
            c: Cursor::new(self.raw),
        }
    }

    /// The value of a parameter (name compared case-insensitively); `Some(None)` for a
    /// parameter without value.
    pub fn get(&self, name: &str) -> Option<Option<&'a [u8]>> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The raw text, starting at the first `;`.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }
}

/// Iterator over validated parameters.
pub struct ParamIter<'a> {
    c: Cursor<'a>,
}

impl<'a> Iterator for ParamIter<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        let c = &mut self.c;
        c.skip_lws();
        if !c.eat(b';') {
            return None;
        }
        c.skip_lws();
        let name = c.token()?;
        let save = c.pos;
        c.skip_lws();
        if c.eat(b'=') {
            c.skip_lws();
            let v = if c.peek() == Some(b'"') {
                c.quoted()?
            } else {
                c.take_while(is_value_char)
            };
            Some((name, Some(v)))
        } else {
            c.pos = save;
            Some((name, None))
        }
    }
}

#[inline]
fn skip_lws_at(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && is_lws(s[i]) {
        i += 1;
    }
    i
}

/// True if only LWS remains.
#[inline]
pub(crate) fn only_lws(rest: &[u8]) -> bool {
    rest.iter().all(|&c| is_lws(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `skip_class` and `has_double_dot` against byte-at-a-time references, for every
    /// start and length of mixed inputs.
    #[test]
    fn class_scans_match_reference() {
        use crate::sip::scan::{class, has_double_dot, is_token_char, skip_class};
        let reference = |s: &[u8], i: usize, f: &dyn Fn(u8) -> bool| {
            i + s[i.min(s.len())..].iter().take_while(|&&c| f(c)).count()
        };
        let classes: [(u8, &dyn Fn(u8) -> bool); 4] = [
            (class::TOKEN, &is_token_char),
            (class::VALUE, &is_value_char),
            (class::HOST, &|c: u8| {
                c.is_ascii_alphanumeric() || c == b'-' || c == b'.'
            }),
            (class::NUMERIC, &|c: u8| c.is_ascii_digit() || c == b'.'),
        ];
        let alphabet = b"aZ09.-:[]@;=,\" \t\r\n\x80\xff\x00~%";
        let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let len = (rng % 40) as usize;
            let mut r = rng;
            let s: Vec<u8> = (0..len)
                .map(|k| {
                    r = r.rotate_left(7) ^ k as u64;
                    // Mostly runs of one class, sometimes anything.
                    if r.is_multiple_of(5) {
                        alphabet[(r >> 8) as usize % alphabet.len()]
                    } else {
                        b"ab1.z9-"[(r >> 8) as usize % 7]
                    }
                })
                .collect();
            for i in 0..=len + 1 {
                for (mask, f) in classes {
                    assert_eq!(
                        skip_class(&s, i, mask),
                        reference(&s, i, f),
                        "{s:?} {i} {mask}"
                    );
                }
            }
            assert_eq!(
                has_double_dot(&s),
                s.windows(2).any(|p| p == b".."),
                "{s:?}"
            );
        }
    }

    #[test]
    fn lws_around_separators() {
        let mut c = Cursor::new(b" ;   tag    = 1918181833n");
        let p = Params::scan(&mut c).unwrap();
        assert_eq!(p.get("tag"), Some(Some(&b"1918181833n"[..])));
        assert!(c.at_end());
    }

    #[test]
    fn empty_names_are_errors() {
        assert!(Params::scan(&mut Cursor::new(b";;")).is_err());
        assert!(Params::scan(&mut Cursor::new(b";a=")).is_err());
        assert!(Params::scan(&mut Cursor::new(b";a=\"open")).is_err());
    }

    #[test]
    fn quoted_and_flag_values() {
        let mut c = Cursor::new(br#";lr;x="a;b";received=[2001:db8::9:255]"#);
        let p = Params::scan(&mut c).unwrap();
        let mut again = Cursor::new(c.s);
        for want in ["lr", "x", "received", "absent"] {
            again.pos = 0;
            let (_, found) = Params::scan_find(&mut again, want.as_bytes()).unwrap();
            assert_eq!(found, p.get(want), "{want}");
        }
        let all: Vec<_> = p.iter().collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0], (&b"lr"[..], None));
        assert_eq!(all[1], (&b"x"[..], Some(&b"a;b"[..])));
        assert_eq!(p.get("RECEIVED"), Some(Some(&b"[2001:db8::9:255]"[..])));
    }
    /// The previous `scan_find` (LWS loop at every separator, out-of-line value scan).
    fn scan_find_reference<'a>(
        c: &mut Cursor<'a>,
        want: &[u8],
    ) -> Result<(Params<'a>, Found<'a>), usize> {
        let s = c.s;
        let start = c.pos;
        let mut end = c.pos;
        let mut found = None;
        loop {
            let semi = skip_lws_at(s, end);
            if s.get(semi) != Some(&b';') {
                break;
            }
            let name_start = skip_lws_at(s, semi + 1);
            let mut i = name_start;
            while i < s.len() && is_token_char(s[i]) {
                i += 1;
            }
            if i == name_start {
                return Err(i);
            }
            let name = &s[name_start..i];
            let eq = skip_lws_at(s, i);
            let mut value = None;
            if s.get(eq) == Some(&b'=') {
                let v = skip_lws_at(s, eq + 1);
                if s.get(v) == Some(&b'"') {
                    let mut q = Cursor { s, pos: v };
                    value = Some(q.quoted().ok_or(v)?);
                    i = q.pos;
                } else {
                    i = skip_value(s, v);
                    if i == v {
                        return Err(v);
                    }
                    value = Some(&s[v..i]);
                }
            }
            if found.is_none()
                && name.len() == want.len()
                && name.iter().zip(want).all(|(&n, &w)| n | 0x20 == w)
            {
                found = Some(value);
            }
            end = i;
        }
        c.pos = end;
        Ok((
            Params {
                raw: &s[start..end],
            },
            found,
        ))
    }

    /// `scan_find` against the reference on mutated parameter lists: same result, same
    /// error offset, same cursor position.
    #[test]
    fn scan_find_matches_reference_on_mutations() {
        let seeds: [&[u8]; 5] = [
            b";branch=z9hG4bK721e418c4.1",
            b";tag=9fxced76sl;lr",
            b" ; received = [2001:db8::9]\t;x=\"a;b\" ;TAG=1",
            b";maddr=10.0.0.1;ttl=16;branch=z9hG4bKx;rport",
            b";a;b=c;Branch=Q",
        ];
        let alphabet = b"aZ09.-:[]@;=,\" \t\r\n\x80\xff\x00~%\\";
        let mut rng = crate::sip::mutate::Mutator::new(0x9e37_79b9_7f4a_7c15);
        let mut next = || rng.next_u64();
        for round in 0..100_000 {
            let mut s = seeds[round % seeds.len()].to_vec();
            for _ in 0..(next() % 4) {
                let r = next();
                let at = (r >> 8) as usize % (s.len() + 1);
                let b = alphabet[(r >> 32) as usize % alphabet.len()];
                match r % 3 {
                    0 if at < s.len() => s[at] = b,
                    1 => s.insert(at, b),
                    _ if at < s.len() => {
                        s.remove(at);
                    }
                    _ => {}
                }
            }
            let start = (next() % 2) as usize;
            for want in [&b"branch"[..], b"tag", b"", b"lr"] {
                let mut a = Cursor::new(&s);
                let mut b = Cursor::new(&s);
                a.pos = start.min(s.len());
                b.pos = a.pos;
                let ra = Params::scan_find(&mut a, want);
                let rb = scan_find_reference(&mut b, want);
                assert_eq!(ra, rb, "{s:?} {want:?}");
                assert_eq!(a.pos, b.pos, "{s:?} {want:?}");
            }
        }
    }
}
