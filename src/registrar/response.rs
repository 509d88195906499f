//! Writing REGISTER responses: the 200 listing every current binding with its remaining
//! `expires` (RFC 3261 §10.3 step 8) and its q-value, instance and reg-id, with the Path echoed
//! (RFC 3327 §5.3); `423` with `Min-Expires` (§10.3 step 7, §20.23); other refusals with their
//! status and reason.

use super::binding::{Binding, DEFAULT_Q};
use super::outcome::RegisterError;
use super::register::ResponseCtx;
use crate::sip::write::{finish, header, header_u32, response_head};
use crate::sip::{HeaderName, Message};

fn push_u32(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Writes a q-value given in thousandths in its shortest form (`1`, `0`, `0.5`, `0.007`).
pub fn write_qvalue(out: &mut Vec<u8>, q: u16) {
    if q >= 1000 {
        out.push(b'1');
        return;
    }
    out.push(b'0');
    if q == 0 {
        return;
    }
    let digits = [
        b'0' + (q / 100) as u8,
        b'0' + (q / 10 % 10) as u8,
        b'0' + (q % 10) as u8,
    ];
    let len = 3 - digits.iter().rev().take_while(|&&d| d == b'0').count();
    out.push(b'.');
    out.extend_from_slice(&digits[..len]);
}

/// Writes `Contact: <uri>;expires=N[;q=..][;+sip.instance=".."][;reg-id=N]`.
fn write_contact(out: &mut Vec<u8>, b: &Binding, now_ms: u64) {
    out.extend_from_slice(b"Contact: <");
    out.extend_from_slice(b.contact_uri());
    out.extend_from_slice(b">;expires=");
    push_u32(out, b.remaining_secs(now_ms));
    if b.q() != DEFAULT_Q {
        out.extend_from_slice(b";q=");
        write_qvalue(out, b.q());
    }
    if let Some(instance) = b.instance() {
        out.extend_from_slice(b";+sip.instance=\"");
        out.extend_from_slice(instance);
        out.push(b'"');
    }
    if let Some(id) = b.reg_id() {
        out.extend_from_slice(b";reg-id=");
        push_u32(out, id);
    }
    out.extend_from_slice(b"\r\n");
}

/// The 200 of a REGISTER: every binding of the AOR, then the request's Path.
pub(super) fn write_ok<'b>(
    out: &mut Vec<u8>,
    req: &Message<'_>,
    ctx: &ResponseCtx<'_>,
    bindings: &'b [Binding],
    others: impl Iterator<Item = &'b Binding>,
    now_ms: u64,
    flow_timer: Option<u32>,
) {
    response_head(out, req, 200, b"OK", Some(ctx.to_tag), ctx.via_fixup);
    for b in bindings.iter().chain(others) {
        write_contact(out, b, now_ms);
    }
    if let Some(s) = flow_timer {
        // RFC 5626 §6: the registrar that takes the flow says so, and how often to keep it.
        header(out, "Require", b"outbound");
        header_u32(out, "Flow-Timer", s);
    }
    for path in req.header_all(HeaderName::Path) {
        header(out, "Path", path);
    }
    finish(out, b"");
}

/// A refusal; `423` carries `Min-Expires`.
pub(super) fn write_error(
    out: &mut Vec<u8>,
    req: &Message<'_>,
    ctx: &ResponseCtx<'_>,
    e: RegisterError,
    min_expires: u32,
) {
    response_head(
        out,
        req,
        e.status(),
        e.reason(),
        Some(ctx.to_tag),
        ctx.via_fixup,
    );
    if e == RegisterError::IntervalTooBrief {
        header_u32(out, "Min-Expires", min_expires);
    }
    finish(out, b"");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qvalues_in_shortest_form() {
        for (q, s) in [
            (1000, "1"),
            (0, "0"),
            (500, "0.5"),
            (330, "0.33"),
            (7, "0.007"),
            (999, "0.999"),
        ] {
            let mut out = Vec::new();
            write_qvalue(&mut out, q);
            assert_eq!(out, s.as_bytes(), "q={q}");
        }
    }
}
