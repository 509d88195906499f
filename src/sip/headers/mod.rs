//! Typed, lazily parsed header accessors on [`Message`] and the full-message check
//! [`Message::validate`] (RFC 3261 §8.1.1 mandatory headers, §20 header grammars, RFC 4475
//! torture cases). Each accessor parses the header's bytes when called; nothing is cached and
//! nothing is allocated. Errors are [`ParseError`]s naming the header and byte offset.

pub mod auth;
pub mod name_addr;
pub mod params;
pub mod simple;
pub mod via;

pub use auth::{AuthHeader, DigestParams};
pub use name_addr::{contact_value, parse_qvalue, ContactValue, NameAddr, NameAddrList};
pub use params::Params;
pub use simple::{CSeq, ContentType};
pub use via::{Via, MAGIC_COOKIE};

use super::error::{ErrorKind, ParseError};
use super::header_name::HeaderName;
use super::message::{Message, StartLine};
use super::scan::CommaSplit;
use super::uri::{Scheme, Uri};

/// Parsed Request-URI, From, To (and its URI) and top Via, kept in the message after their first use (each
/// a `Cell` of a `Copy` value: the message stays borrowed immutably).
#[derive(Clone, Default)]
pub struct HeaderCache<'a> {
    from: core::cell::Cell<Option<Result<NameAddr<'a>, ParseError>>>,
    to: core::cell::Cell<Option<Result<NameAddr<'a>, ParseError>>>,
    /// The To URI: a registrar reads it to pick the owner shard, to check the domain and as
    /// the address-of-record.
    to_uri: core::cell::Cell<Option<Result<Uri<'a>, ParseError>>>,
    top_via: core::cell::Cell<Option<Result<Via<'a>, ParseError>>>,
    request_uri: core::cell::Cell<Option<Result<Uri<'a>, ParseError>>>,
    top_route_uri: core::cell::Cell<Option<Option<Uri<'a>>>>,
}

/// Iterator over every Via value of a message, across header lines and commas.
pub struct ViaIter<'m, 'a> {
    lines: core::slice::Iter<'m, super::message::HeaderSlot>,
    buf: &'a [u8],
    /// The value of the current Via line and where its next element starts.
    current: Option<(&'a [u8], usize)>,
    current_start: usize,
}

impl<'a> Iterator for ViaIter<'_, 'a> {
    type Item = Result<Via<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((v, pos)) = self.current {
                // Each element is parsed where it starts; it must be followed by a comma or
                // the end of the line. A parsed Via has balanced quotes and no `<`, so that
                // comma is one a top-level split (`CommaSplit`) would also split at.
                let end = match Via::parse_at(v, pos) {
                    Ok((via, end)) => {
                        let mut p = end;
                        while p < v.len() && crate::sip::scan::is_lws(v[p]) {
                            p += 1;
                        }
                        if p == v.len() {
                            self.current = None;
                            return Some(Ok(via));
                        }
                        if v[p] == b',' {
                            self.current = Some((v, p + 1));
                            return Some(Ok(via));
                        }
                        end
                    }
                    Err(e) => e,
                };
                return Some(Err(self.element_error(v, pos, end)));
            }
            let slot = self.lines.by_ref().find(|s| s.name == HeaderName::Via)?;
            self.current = Some((&self.buf[slot.value.range()], 0));
            self.current_start = slot.value.start as usize;
        }
    }
}

impl<'a> ViaIter<'_, 'a> {
    /// A malformed element at `pos` (the problem found at `at`): the error as the split
    /// at commas reports it (its offsets count from the element without trailing LWS), and
    /// the iteration goes on after the next top-level comma, if any.
    #[cold]
    fn element_error(&mut self, v: &'a [u8], pos: usize, at: usize) -> ParseError {
        let mut split = CommaSplit::new(&v[pos..]);
        let at = match split.next() {
            Some((off, elem)) => Via::parse(elem).err().map_or(at, |e| pos + off + e),
            None => at,
        };
        self.current = split.next_start().map(|next| (v, pos + next));
        ParseError::in_header(ErrorKind::BadHeaderValue, "Via", self.current_start + at)
    }
}

impl<'a> Message<'a> {
    fn bad(&self, kind: ErrorKind, name: HeaderName, at: usize) -> ParseError {
        ParseError::in_header(kind, name.as_str(), at)
    }

    /// The value of a header that must appear exactly once, or `MissingHeader`.
    fn required(&self, name: HeaderName) -> Result<&'a [u8], ParseError> {
        self.header(name)
            .ok_or_else(|| self.bad(ErrorKind::MissingHeader, name, self.headers_offset()))
    }

    /// The top Via value (first value of the first Via line).
    pub fn top_via(&self) -> Result<Via<'a>, ParseError> {
        if let Some(v) = self.cache.top_via.get() {
            return v;
        }
        let v = self.vias().next().unwrap_or_else(|| {
            Err(self.bad(
                ErrorKind::MissingHeader,
                HeaderName::Via,
                self.headers_offset(),
            ))
        });
        self.cache.top_via.set(Some(v));
        v
    }

    /// All Via values in order.
    pub fn vias(&self) -> ViaIter<'_, 'a> {
        ViaIter {
            lines: self.slots().iter(),
            buf: self.buf(),
            current: None,
            current_start: 0,
        }
    }

    /// From or To: display name, URI extent and parameters; the URI itself is checked by
    /// `NameAddr::uri` and by [`Message::validate`] (see [`NameAddr::parse_lazy`]).
    fn name_addr(&self, name: HeaderName) -> Result<NameAddr<'a>, ParseError> {
        let v = self.required(name)?;
        let at = self.offset_of(v);
        NameAddr::parse_lazy(v).map_err(|e| self.bad(ErrorKind::BadHeaderValue, name, at + e))
    }

    /// The URI of a name-addr of header `name` (parsed lazily: From, To, a Route), with an
    /// error naming the header and the URI's offset.
    fn name_addr_uri(&self, name: HeaderName, addr: &NameAddr<'a>) -> Result<Uri<'a>, ParseError> {
        addr.uri().map_err(|_| {
            self.bad(
                ErrorKind::BadHeaderValue,
                name,
                self.offset_of(addr.uri_raw),
            )
        })
    }

    /// The From header.
    pub fn from(&self) -> Result<NameAddr<'a>, ParseError> {
        if let Some(v) = self.cache.from.get() {
            return v;
        }
        let v = self.name_addr(HeaderName::From);
        self.cache.from.set(Some(v));
        v
    }

    /// The To header.
    pub fn to(&self) -> Result<NameAddr<'a>, ParseError> {
        if let Some(v) = self.cache.to.get() {
            return v;
        }
        let v = self.name_addr(HeaderName::To);
        self.cache.to.set(Some(v));
        v
    }

    /// The URI of the To header, with an error naming To at the URI's offset.
    pub fn to_uri(&self) -> Result<Uri<'a>, ParseError> {
        if let Some(v) = self.cache.to_uri.get() {
            return v;
        }
        let v = self
            .to()
            .and_then(|to| self.name_addr_uri(HeaderName::To, &to));
        self.cache.to_uri.set(Some(v));
        v
    }

    /// The Call-ID.
    pub fn call_id(&self) -> Result<&'a [u8], ParseError> {
        let v = self.required(HeaderName::CallId)?;
        simple::parse_call_id(v).map_err(|(e, _)| {
            self.bad(
                ErrorKind::BadHeaderValue,
                HeaderName::CallId,
                self.offset_of(v) + e,
            )
        })
    }

    /// The CSeq.
    pub fn cseq(&self) -> Result<CSeq<'a>, ParseError> {
        let v = self.required(HeaderName::CSeq)?;
        CSeq::parse(v).map_err(|(e, over)| {
            let kind = if over {
                ErrorKind::OutOfRange
            } else {
                ErrorKind::BadHeaderValue
            };
            self.bad(kind, HeaderName::CSeq, self.offset_of(v) + e)
        })
    }

    fn number(&self, name: HeaderName, max: u64) -> Result<Option<u64>, ParseError> {
        match self.header(name) {
            None => Ok(None),
            Some(v) => simple::parse_number(v, max).map(Some).map_err(|(_, over)| {
                let kind = if over {
                    ErrorKind::OutOfRange
                } else {
                    ErrorKind::BadHeaderValue
                };
                self.bad(kind, name, self.offset_of(v))
            }),
        }
    }

    /// Max-Forwards, if present.
    pub fn max_forwards(&self) -> Result<Option<u8>, ParseError> {
        self.number(HeaderName::MaxForwards, 255)
            .map(|v| v.map(|n| n as u8))
    }

    /// Expires, if present.
    pub fn expires(&self) -> Result<Option<u32>, ParseError> {
        self.number(HeaderName::Expires, u32::MAX as u64)
            .map(|v| v.map(|n| n as u32))
    }

    /// Min-Expires, if present.
    pub fn min_expires(&self) -> Result<Option<u32>, ParseError> {
        self.number(HeaderName::MinExpires, u32::MAX as u64)
            .map(|v| v.map(|n| n as u32))
    }

    /// Content-Length as declared (the parser already framed the body with it).
    pub fn content_length(&self) -> Option<u32> {
        self.header(HeaderName::ContentLength)
            .and_then(|v| simple::parse_number(v, u32::MAX as u64).ok())
            .map(|n| n as u32)
    }

    /// Content-Type, if present.
    pub fn content_type(&self) -> Result<Option<ContentType<'a>>, ParseError> {
        match self.header(HeaderName::ContentType) {
            None => Ok(None),
            Some(v) => ContentType::parse(v).map(Some).map_err(|(e, _)| {
                self.bad(
                    ErrorKind::BadHeaderValue,
                    HeaderName::ContentType,
                    self.offset_of(v) + e,
                )
            }),
        }
    }

    /// Every element of a name-addr list header (Contact, Route, Record-Route, Path) across
    /// all its lines. A `*` Contact is reported as an error here; see [`Message::contact_star`].
    pub fn name_addrs(
        &self,
        name: HeaderName,
    ) -> impl Iterator<Item = Result<NameAddr<'a>, ParseError>> + '_ {
        self.header_all(name).flat_map(move |v| {
            let at = self.offset_of(v);
            NameAddrList::new(v)
                .map(move |r| r.map_err(|e| self.bad(ErrorKind::BadHeaderValue, name, at + e)))
        })
    }

    /// Contacts (excluding `*`).
    pub fn contacts(&self) -> impl Iterator<Item = Result<NameAddr<'a>, ParseError>> + '_ {
        self.name_addrs(HeaderName::Contact)
    }

    /// [`Message::name_addrs`] without the URIs checked: each element's `uri()` parses and
    /// checks its URI. For callers that read every element's URI (it would otherwise be
    /// parsed twice).
    pub fn name_addrs_lazy(
        &self,
        name: HeaderName,
    ) -> impl Iterator<Item = Result<NameAddr<'a>, ParseError>> + '_ {
        self.header_all(name).flat_map(move |v| {
            let at = self.offset_of(v);
            NameAddrList::new_lazy(v)
                .map(move |r| r.map_err(|e| self.bad(ErrorKind::BadHeaderValue, name, at + e)))
        })
    }

    /// [`Message::contacts`] without the URIs checked (see [`Message::name_addrs_lazy`]):
    /// the registrar reads every contact's URI.
    pub fn contacts_lazy(&self) -> impl Iterator<Item = Result<NameAddr<'a>, ParseError>> + '_ {
        self.name_addrs_lazy(HeaderName::Contact)
    }

    /// True if there is a `Contact: *`.
    pub fn contact_star(&self) -> bool {
        self.header_all(HeaderName::Contact)
            .any(|v| contact_value(v) == ContactValue::Star)
    }

    /// Route values in order.
    pub fn routes(&self) -> impl Iterator<Item = Result<NameAddr<'a>, ParseError>> + '_ {
        self.name_addrs(HeaderName::Route)
    }

    /// True if `name` appears on one line with no comma in it, i.e. holds one value; a cheap
    /// test that saves walking a list (which parses its first value again) for nothing.
    pub fn has_one_value(&self, name: HeaderName) -> bool {
        let mut lines = self.header_all(name);
        lines.next().is_some_and(|v| !v.contains(&b',')) && lines.next().is_none()
    }

    /// The URI of the first Route value, parsed once (loose routing reads it several times);
    /// None without a Route or when it does not parse.
    pub fn top_route_uri(&self) -> Option<Uri<'a>> {
        if let Some(v) = self.cache.top_route_uri.get() {
            return v;
        }
        let v = self
            .name_addrs_lazy(HeaderName::Route)
            .next()
            .and_then(|r| r.ok())
            .and_then(|r| r.uri().ok());
        self.cache.top_route_uri.set(Some(v));
        v
    }

    /// Record-Route values in order.
    pub fn record_routes(&self) -> impl Iterator<Item = Result<NameAddr<'a>, ParseError>> + '_ {
        self.name_addrs(HeaderName::RecordRoute)
    }

    /// Path values in order (RFC 3327).
    pub fn paths(&self) -> impl Iterator<Item = Result<NameAddr<'a>, ParseError>> + '_ {
        self.name_addrs(HeaderName::Path)
    }

    /// Option tags of a Require / Proxy-Require / Supported / Unsupported header (all lines).
    pub fn option_tags(
        &self,
        name: HeaderName,
    ) -> impl Iterator<Item = Result<&'a [u8], ParseError>> + '_ {
        self.header_all(name).flat_map(move |v| {
            let at = self.offset_of(v);
            simple::token_list(v)
                .map(move |r| r.map_err(|e| self.bad(ErrorKind::BadHeaderValue, name, at + e)))
        })
    }

    /// An Authorization-like header (Authorization, Proxy-Authorization, WWW-Authenticate,
    /// Proxy-Authenticate), every line.
    pub fn auth_headers(
        &self,
        name: HeaderName,
    ) -> impl Iterator<Item = Result<AuthHeader<'a>, ParseError>> + '_ {
        self.header_all(name).map(move |v| {
            AuthHeader::parse(v)
                .map_err(|e| self.bad(ErrorKind::BadHeaderValue, name, self.offset_of(v) + e))
        })
    }

    /// The Request-URI, parsed.
    pub fn request_uri(&self) -> Result<Uri<'a>, ParseError> {
        if let Some(v) = self.cache.request_uri.get() {
            return v;
        }
        let v = match self.request_uri_bytes() {
            None => Err(ParseError::new(ErrorKind::BadStartLine, 0)),
            Some(raw) => Uri::parse(raw)
                .map_err(|_| ParseError::new(ErrorKind::BadRequestUri, self.offset_of(raw))),
        };
        self.cache.request_uri.set(Some(v));
        v
    }

    /// Parses every header the server relies on and checks the rules that make a message
    /// unusable: mandatory headers (Via, From, To, Call-ID, CSeq) present once, numbers in
    /// range, CSeq method equal to the request method, SIP Request-URIs without headers,
    /// Content-Length consistent. Returns the first problem. This is what a UAS (the
    /// registrar) checks; a proxy checks less ([`Message::validate_for_proxy`]).
    pub fn validate(&self) -> Result<(), ParseError> {
        self.validate_transaction_fields(usize::MAX)?;
        self.validate_rest()
    }

    /// RFC 3261 §16.3 step 1: what a proxy needs well-formed to handle a message with a
    /// transaction and to forward it: the start line, the Vias it reads (the top one of a
    /// request; the top two of a response, ours and the next hop's), From, To, Call-ID, CSeq,
    /// Max-Forwards, Content-Length, and the Route, Proxy-Require and Proxy-Authorization it
    /// acts on. "Any other components, well-formed or not, SHOULD be ignored and remain
    /// unchanged when the message is forwarded": Contact, Record-Route, the other Vias and
    /// the rest go on as they came, unparsed.
    pub fn validate_for_proxy(&self) -> Result<(), ParseError> {
        self.validate_transaction_fields(if self.is_request() { 1 } else { 2 })?;
        // Each Route URI parsed once; the top one is what loose routing reads next.
        for (i, r) in self.name_addrs_lazy(HeaderName::Route).enumerate() {
            let route = r?;
            let uri = self.name_addr_uri(HeaderName::Route, &route)?;
            if i == 0 {
                self.cache.top_route_uri.set(Some(Some(uri)));
            }
        }
        for r in self.option_tags(HeaderName::ProxyRequire) {
            r?;
        }
        for r in self.auth_headers(HeaderName::ProxyAuthorization) {
            r?;
        }
        Ok(())
    }

    /// The checks every message gets, with the first `vias` Via values parsed.
    fn validate_transaction_fields(&self, vias: usize) -> Result<(), ParseError> {
        let is_request = self.is_request();
        if let StartLine::Request { .. } = self.start_line() {
            let uri = self.request_uri()?;
            if matches!(uri.scheme, Scheme::Sip | Scheme::Sips) && !uri.headers.is_empty() {
                // RFC 4475 §3.1.2.11: never accept escaped headers in a SIP Request-URI.
                return Err(ParseError::new(
                    ErrorKind::BadRequestUri,
                    self.offset_of(uri.raw),
                ));
            }
        }
        if self.has_conflicting_content_length() {
            let at = self
                .header_all(HeaderName::ContentLength)
                .nth(1)
                .map_or(0, |v| self.offset_of(v));
            return Err(self.bad(
                ErrorKind::ConflictingContentLength,
                HeaderName::ContentLength,
                at,
            ));
        }
        for name in [
            HeaderName::From,
            HeaderName::To,
            HeaderName::CallId,
            HeaderName::CSeq,
            HeaderName::MaxForwards,
        ] {
            if let Some(second) = self.header_all(name).nth(1) {
                return Err(self.bad(ErrorKind::DuplicateHeader, name, self.offset_of(second)));
            }
        }
        if is_request {
            self.required(HeaderName::Via)?;
        }
        // The top Via goes into its cache (every path reads it again). Walking to a lower
        // Via parses the ones above it, so with a single Via value only the cache is used.
        if vias == 1 || (vias == usize::MAX && self.has_one_value(HeaderName::Via)) {
            if self.header(HeaderName::Via).is_some() {
                self.top_via()?;
            }
        } else {
            let cached = self.cache.top_via.get().is_some();
            for (i, v) in self.vias().take(vias).enumerate() {
                if i == 0 && !cached {
                    self.cache.top_via.set(Some(v));
                }
                v?;
            }
        }
        self.from()?;
        self.to()?;
        self.call_id()?;
        let cseq = self.cseq()?;
        if let Some(m) = self.method_bytes() {
            if cseq.method != m {
                let v = self.header(HeaderName::CSeq).unwrap_or_default();
                return Err(self.bad(
                    ErrorKind::CSeqMethodMismatch,
                    HeaderName::CSeq,
                    self.offset_of(v),
                ));
            }
        }
        self.max_forwards()?;
        Ok(())
    }

    /// The checks of [`Message::validate`] beyond the transaction fields.
    fn validate_rest(&self) -> Result<(), ParseError> {
        // validate_transaction_fields has parsed both (the proxy's path reads only their tags).
        self.name_addr_uri(HeaderName::From, &self.from()?)?;
        self.to_uri()?;
        self.expires()?;
        self.min_expires()?;
        self.content_type()?;
        for v in self.header_all(HeaderName::Contact) {
            if contact_value(v) == ContactValue::Star {
                continue;
            }
            let at = self.offset_of(v);
            for r in NameAddrList::new(v) {
                r.map_err(|e| self.bad(ErrorKind::BadHeaderValue, HeaderName::Contact, at + e))?;
            }
        }
        for name in [HeaderName::Route, HeaderName::RecordRoute, HeaderName::Path] {
            for r in self.name_addrs(name) {
                r?;
            }
        }
        for name in [
            HeaderName::Require,
            HeaderName::ProxyRequire,
            HeaderName::Supported,
            HeaderName::Unsupported,
        ] {
            for r in self.option_tags(name) {
                r?;
            }
        }
        for name in [
            HeaderName::Authorization,
            HeaderName::ProxyAuthorization,
            HeaderName::WwwAuthenticate,
            HeaderName::ProxyAuthenticate,
        ] {
            for r in self.auth_headers(name) {
                r?;
            }
        }
        if let Some(d) = self.header(HeaderName::Date) {
            simple::check_date(d).map_err(|_| {
                self.bad(
                    ErrorKind::BadHeaderValue,
                    HeaderName::Date,
                    self.offset_of(d),
                )
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Via iteration before `Via::parse_at`: split the line at top-level commas, then
    /// parse each element.
    /// A Via's host and branch, or the error.
    type Seen = Result<(Vec<u8>, Option<Vec<u8>>), ParseError>;

    fn split_reference(msg: &Message<'_>) -> Vec<Seen> {
        let mut out = Vec::new();
        for v in msg.header_all(HeaderName::Via) {
            let start = msg.offset_of(v);
            for (off, elem) in CommaSplit::new(v) {
                out.push(
                    Via::parse(elem)
                        .map(|via| (via.host.to_vec(), via.branch().map(<[u8]>::to_vec)))
                        .map_err(|e| {
                            ParseError::in_header(ErrorKind::BadHeaderValue, "Via", start + off + e)
                        }),
                );
            }
        }
        out
    }

    #[test]
    fn via_elements_match_comma_split_reference() {
        let lines: [&[u8]; 8] = [
            b"SIP/2.0/UDP a.example.com:5060;branch=z9hG4bK1, SIP/2.0/TCP b;branch=2",
            b"SIP/2.0/UDP h;x=\"a,b\";branch=3 ,SIP/2.0/UDP [2001:db8::1]:5070",
            b"SIP/2.0/UDP h;branch=4,,SIP/2.0/UDP g",
            b"SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw , SIP/2.0/UDP x",
            b"SIP/2.0/UDP h junk, SIP/2.0/UDP g;branch=5",
            b"SIP/2.0/UDP h;a=<x,y>, SIP/2.0/UDP g",
            b"SIP/2.0/UDP h,",
            b"",
        ];
        let alphabet = b",;=\" <>/:[]\\aZ09\t";
        let mut m = crate::sip::mutate::Mutator::new(0x2545_f491_4f6c_dd1d);
        for line in lines {
            for round in 0..3000 {
                let v = m.mutated(line, round % 3, alphabet);
                let mut raw = b"OPTIONS sip:b@example.com SIP/2.0\r\nVia: ".to_vec();
                raw.extend_from_slice(&v);
                raw.extend_from_slice(b"\r\nVia: SIP/2.0/UDP last;branch=9\r\n\r\n");
                let Ok(msg) = Message::parse(&raw) else {
                    continue;
                };
                let new: Vec<_> = msg
                    .vias()
                    .map(|r| r.map(|via| (via.host.to_vec(), via.branch().map(<[u8]>::to_vec))))
                    .collect();
                assert_eq!(
                    new,
                    split_reference(&msg),
                    "{:?}",
                    String::from_utf8_lossy(&v)
                );
            }
        }
    }

    /// An INVITE whose `extra` header line replaces the Contact.
    fn invite_with(extra: &str) -> String {
        format!(
            "INVITE sip:bob@example.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP a.example.com;branch=z9hG4bKtop\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=1\r\n\
             To: <sip:bob@example.com>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n\
             {extra}\r\nContent-Length: 0\r\n\r\n"
        )
    }

    #[test]
    fn from_and_to_uris_are_checked_by_validate_not_by_the_tag_readers() {
        let m = invite_with("Subject: x")
            .replace("From: <sip:alice@example.com>", "From: <sip:alice@[::1>");
        let msg = Message::parse(m.as_bytes()).unwrap();
        // The proxy reads the tag; it does not use the URI (§16.3 step 1).
        assert_eq!(msg.from().unwrap().tag(), Some(&b"1"[..]));
        assert!(msg.from().unwrap().uri().is_err());
        assert_eq!(msg.validate_for_proxy(), Ok(()));
        // A UAS or registrar validating the whole request gets the header and the URI's offset.
        let e = msg.validate().unwrap_err();
        assert_eq!(e.header, Some("From"));
        assert_eq!(e.offset, m.find("sip:alice@[").unwrap());
        let m = invite_with("Subject: x").replace("To: <sip:bob@example.com>", "To: sip:bob@");
        let msg = Message::parse(m.as_bytes()).unwrap();
        assert_eq!(msg.to().unwrap().tag(), None);
        assert_eq!(msg.validate().unwrap_err().header, Some("To"));
        // A Route the proxy acts on: its URI is checked, the error names it and the URI's
        // offset; the valid top Route is what loose routing reads.
        let m = invite_with("Route: <sip:p1.example.com;lr>, <sip:p2..example.com;lr>");
        let msg = Message::parse(m.as_bytes()).unwrap();
        let e = msg.validate_for_proxy().unwrap_err();
        assert_eq!(
            (e.header, e.offset),
            (Some("Route"), m.find("sip:p2").unwrap())
        );
        assert_eq!(msg.top_route_uri().unwrap().host, b"p1.example.com");
    }

    #[test]
    fn a_proxy_validates_what_it_reads_and_lets_the_rest_through() {
        // §16.3 step 1: components the proxy does not use are forwarded as they are.
        for ignored in [
            "Contact: <sip:bob@[::1>",
            "Record-Route: <sip:p1.example.com;lr",
            "Via: SIP/2.0/UDP ,,bad",
            "Expires: soon",
            "Supported: ,",
            "Content-Type: text",
        ] {
            let m = invite_with(ignored);
            let msg = Message::parse(m.as_bytes()).unwrap();
            assert!(msg.validate().is_err(), "a UAS rejects {ignored}");
            assert_eq!(
                msg.validate_for_proxy(),
                Ok(()),
                "a proxy ignores {ignored}"
            );
        }
        // What it acts on must be well-formed.
        for used in [
            "Route: <sip:p1.example.com;lr",
            "Proxy-Require: ,",
            "Proxy-Authorization: Digest a=\"open",
            "Max-Forwards: many",
            "CSeq: 2 INVITE",
        ] {
            let m = invite_with(used);
            let msg = Message::parse(m.as_bytes()).unwrap();
            assert!(msg.validate_for_proxy().is_err(), "a proxy rejects {used}");
        }
        let bad_top = invite_with("Contact: <sip:c@d>").replace("a.example.com;branch", ",");
        assert!(Message::parse(bad_top.as_bytes())
            .unwrap()
            .validate_for_proxy()
            .is_err());
        // A response: our Via and the next hop's (where it goes) must parse; a third need not.
        let resp = |third: &str| {
            format!(
                "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP p.example.com;branch=z9hG4bKp\r\n\
                 Via: SIP/2.0/UDP a.example.com;branch=z9hG4bKa\r\nVia: {third}\r\n\
                 From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>;tag=2\r\n\
                 Call-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
            )
        };
        let third_bad = resp("SIP/2.0/UDP ,,");
        let m = Message::parse(third_bad.as_bytes()).unwrap();
        assert!(m.validate().is_err());
        assert_eq!(m.validate_for_proxy(), Ok(()));
        let second_bad = resp("SIP/2.0/UDP b.example.com").replace("a.example.com;branch", ",");
        assert!(Message::parse(second_bad.as_bytes())
            .unwrap()
            .validate_for_proxy()
            .is_err());
    }
}
