//! The dial plan over real UDP against the release binary (`--shards 2`, so that group legs
//! and in-dialog requests cross shards): prefix routes with normalisation and failover to the
//! next trunk on 503 and on silence (not on 486), trunks taken down by their OPTIONS checks and
//! brought back, least-cost order, calls from an inbound trunk without a challenge and without
//! transit, classes of service and emergency calls, ring groups (parallel, sequential,
//! round-robin) and paging, a bad plan refused at start (exit 2, one line), and a plan
//! reloaded by SIGHUP (a bad one changes nothing).
//!
//! The trunks and phones are fake UAs: a UDP socket on a loopback address whose reader thread
//! answers OPTIONS (the server's trunk checks) when told to and queues everything else for the
//! test, which then waits for the message it expects (by method, Call-ID and CSeq) and keeps
//! the others for later.
//!
//! The same scenarios without sockets: `src/server/tests_routing.rs`.

mod common;

use common::*;
use sipshard::sip::write::{finish, header, response_head};
use sipshard::sip::{HeaderName, Message};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a test waits for a message that should come.
const WAIT: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------------
// Fake user agents.

/// A fake UA (trunk or phone) talking to one server. Its reader thread answers OPTIONS with
/// 200 while `answer_options` is set (and counts them) and queues every other datagram.
struct Ua {
    client: Client,
    addr: SocketAddr,
    /// Where everything this UA sends goes (set when the server starts).
    server: std::cell::Cell<SocketAddr>,
    rx: Receiver<Vec<u8>>,
    /// Datagrams received but not yet asked for.
    backlog: RefCell<VecDeque<Vec<u8>>>,
    answer_options: Arc<AtomicBool>,
    options_answered: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl Ua {
    /// A UA on 127.0.0.1.
    fn new() -> Ua {
        Ua::on("127.0.0.1")
    }

    /// A UA on `ip` (any loopback address), port chosen by the kernel; it talks to the server
    /// [`server`] starts.
    fn on(ip: &str) -> Ua {
        let sock = UdpSocket::bind((ip, 0)).expect("bind a fake UA");
        let addr = sock.local_addr().unwrap();
        let reader_sock = sock.try_clone().unwrap();
        reader_sock
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let (tx, rx) = channel();
        let answer_options = Arc::new(AtomicBool::new(true));
        let options_answered = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (answer, answered, stop) = (
                answer_options.clone(),
                options_answered.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65535];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, src)) = reader_sock.recv_from(&mut buf) else {
                        continue;
                    };
                    let d = buf[..n].to_vec();
                    let Ok(m) = Message::parse(&d) else { continue };
                    if m.method_bytes() == Some(&b"OPTIONS"[..]) {
                        if answer.load(Ordering::SeqCst) {
                            let r = response(&d, 200, "OK", "opt", addr);
                            let _ = reader_sock.send_to(&r, src);
                            answered.fetch_add(1, Ordering::SeqCst);
                        }
                        continue;
                    }
                    if tx.send(d).is_err() {
                        break;
                    }
                }
            })
        };
        Ua {
            client: Client {
                sock,
                addr,
                last_src: std::cell::Cell::new(None),
            },
            addr,
            server: std::cell::Cell::new(SocketAddr::from(([127, 0, 0, 1], 9))),
            rx,
            backlog: RefCell::new(VecDeque::new()),
            answer_options,
            options_answered,
            stop,
            reader: Some(reader),
        }
    }

    fn send(&self, msg: impl AsRef<[u8]>) {
        self.client.send_bytes(msg.as_ref(), self.server.get());
    }

    /// The first datagram (kept or arriving within `t`) that `want` accepts.
    fn try_wait(&self, t: Duration, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        let mut backlog = self.backlog.borrow_mut();
        if let Some(i) = backlog.iter().position(|m| want(m)) {
            return backlog.remove(i);
        }
        let deadline = Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(m) if want(&m) => return Some(m),
                Ok(m) => backlog.push_back(m),
                Err(_) => return None,
            }
        }
    }

    #[track_caller]
    fn wait(&self, what: &str, want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        match self.try_wait(WAIT, want) {
            Some(m) => m,
            None => panic!(
                "{what}: nothing at {} within {WAIT:?}; received meanwhile:\n{}",
                self.addr,
                self.dump()
            ),
        }
    }

    /// The request `method` of call `call_id`.
    #[track_caller]
    fn request(&self, method: &str, call_id: &str) -> Vec<u8> {
        self.wait(&format!("{method} of {call_id}"), |m| {
            is_request(m, method, call_id)
        })
    }

    /// The first final response (>= 200) to the request `cseq_method` of `call_id`.
    #[track_caller]
    fn final_response(&self, cseq_method: &str, call_id: &str) -> Vec<u8> {
        self.wait(&format!("final response to {cseq_method} {call_id}"), |m| {
            is_response(m, cseq_method, call_id) && code(m) >= 200
        })
    }

    /// The response `status` to `cseq_method` of `call_id`.
    #[track_caller]
    fn response_with(&self, status: u16, cseq_method: &str, call_id: &str) -> Vec<u8> {
        self.wait(&format!("{status} to {cseq_method} {call_id}"), |m| {
            is_response(m, cseq_method, call_id) && code(m) == status
        })
    }

    /// Nothing `unwanted` arrives (or was kept) within `t`.
    #[track_caller]
    fn expect_none(&self, what: &str, t: Duration, unwanted: impl Fn(&[u8]) -> bool) {
        if let Some(m) = self.try_wait(t, unwanted) {
            panic!(
                "{what}: unexpected at {}:\n{}",
                self.addr,
                String::from_utf8_lossy(&m)
            );
        }
    }

    /// Answers `req` (to the server it came from) with `code`: a To tag of this UA, and for an
    /// INVITE the Record-Route copied and a Contact of this UA.
    fn respond(&self, req: &[u8], code: u16, reason: &str) {
        let tag = format!("t{}", self.addr.port());
        self.send(response(req, code, reason, &tag, self.addr));
    }

    /// Registers `sip:user@localhost` with a Contact of this UA, answering a 401 with
    /// `password`.
    #[track_caller]
    fn register(&self, user: &str, password: Option<&str>) {
        let reg = Register::new(&format!("sip:{user}@localhost"))
            .contact(&format!("<sip:{user}@{}>", self.addr))
            .expires(600);
        self.send(reg.build(&self.client));
        let mut r = self.final_response("REGISTER", &reg.call_id);
        if status(&r) == 401 {
            let pw = password.expect("challenged, and no password");
            let ch = Message::parse(&r).unwrap();
            let params =
                sipshard::auth::client::first_supported_challenge(&ch, HeaderName::WwwAuthenticate)
                    .expect("a challenge we can answer");
            let creds = sipshard::auth::client_response(
                &params,
                user,
                pw,
                b"REGISTER",
                reg.ruri.as_bytes(),
                1,
                "0b1c",
            )
            .unwrap();
            let again = reg.next().with_auth(&creds);
            self.send(again.build(&self.client));
            r = self.wait("200 to the REGISTER with credentials", |m| {
                is_response(m, "REGISTER", &reg.call_id)
                    && cseq_of(m).starts_with(&format!("{} ", again.cseq))
                    && code(m) >= 200
            });
        }
        assert_status(&r, 200);
    }

    fn set_answer_options(&self, on: bool) {
        self.answer_options.store(on, Ordering::SeqCst);
    }

    fn options_answered(&self) -> usize {
        self.options_answered.load(Ordering::SeqCst)
    }

    /// Everything kept so far, for failure messages.
    fn dump(&self) -> String {
        while let Ok(m) = self.rx.try_recv() {
            self.backlog.borrow_mut().push_back(m);
        }
        self.backlog
            .borrow()
            .iter()
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .collect::<Vec<_>>()
            .join("----\n")
    }
}

impl Drop for Ua {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// A UAS response to `req`: Via, From, To (with `tag` added), Call-ID and CSeq copied; for an
/// INVITE answered with 101-299, the Record-Route copied and a Contact at `contact`.
fn response(req: &[u8], code: u16, reason: &str, tag: &str, contact: SocketAddr) -> Vec<u8> {
    let m = Message::parse(req).unwrap();
    let mut out = Vec::new();
    response_head(
        &mut out,
        &m,
        code,
        reason.as_bytes(),
        Some(tag.as_bytes()),
        None,
    );
    if m.method_bytes() == Some(&b"INVITE"[..]) && (101..300).contains(&code) {
        for rr in m.header_all(HeaderName::RecordRoute) {
            header(&mut out, "Record-Route", rr);
        }
        header(
            &mut out,
            "Contact",
            format!("<sip:ua@{contact}>").as_bytes(),
        );
    }
    finish(&mut out, b"");
    out
}

// ---------------------------------------------------------------------------------------------
// Messages.

fn code(m: &[u8]) -> u16 {
    Message::parse(m).ok().and_then(|m| m.status()).unwrap_or(0)
}

fn call_id_of(m: &[u8]) -> String {
    header_value(m, "Call-ID").unwrap_or_default()
}

fn cseq_of(m: &[u8]) -> String {
    header_value(m, "CSeq").unwrap_or_default()
}

fn is_request(m: &[u8], method: &str, call_id: &str) -> bool {
    Message::parse(m).is_ok_and(|p| p.method_bytes() == Some(method.as_bytes()))
        && call_id_of(m) == call_id
}

fn is_response(m: &[u8], cseq_method: &str, call_id: &str) -> bool {
    code(m) != 0
        && call_id_of(m) == call_id
        && cseq_of(m).split_whitespace().nth(1) == Some(cseq_method)
}

fn ruri(m: &[u8]) -> String {
    String::from_utf8_lossy(Message::parse(m).unwrap().request_uri_bytes().unwrap()).into_owned()
}

fn top_branch(m: &[u8]) -> String {
    let via = header_value(m, "Via").expect("a Via");
    via.split(';')
        .find_map(|p| p.trim().strip_prefix("branch="))
        .expect("a branch")
        .to_string()
}

/// An INVITE from `ua` (as `user@localhost`) to `ruri`.
struct Invite {
    text: String,
    call_id: String,
}

fn invite(ua: &Ua, ruri: &str, user: &str, cseq: u32, call_id: &str, extra: &str) -> Invite {
    let text = format!(
        "INVITE {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {a};branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         {extra}\
         From: <sip:{user}@localhost>;tag=f-{call_id}\r\n\
         To: <{ruri}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} INVITE\r\n\
         Contact: <sip:{user}@{a}>\r\n\
         Content-Length: 0\r\n\r\n",
        a = ua.addr,
        branch = unique("z9hG4bK-"),
    );
    Invite {
        text,
        call_id: call_id.to_string(),
    }
}

/// Sends an INVITE to `ruri` from `ua` and returns it.
fn call(ua: &Ua, ruri: &str) -> Invite {
    let inv = invite(ua, ruri, "caller", 1, &unique("call-"), "");
    ua.send(&inv.text);
    inv
}

/// The ACK of a non-2xx final response `resp` to `inv` (same branch, the response's To).
fn ack_failure(inv: &Invite, resp: &[u8]) -> String {
    let m = Message::parse(inv.text.as_bytes()).unwrap();
    let via = String::from_utf8_lossy(m.header(HeaderName::Via).unwrap()).into_owned();
    let from = String::from_utf8_lossy(m.header(HeaderName::From).unwrap()).into_owned();
    let cseq = cseq_of(inv.text.as_bytes());
    let n = cseq.split_whitespace().next().unwrap();
    format!(
        "ACK {ruri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\n\
         Call-ID: {id}\r\nCSeq: {n} ACK\r\nContent-Length: 0\r\n\r\n",
        ruri = ruri(inv.text.as_bytes()),
        to = header_value(resp, "To").unwrap(),
        id = inv.call_id,
    )
}

/// An in-dialog request of the caller after the 2xx `ok`: to the Contact of `ok`, along the
/// route set from its Record-Route (reversed, RFC 3261 §12.1.2), sent to the server.
fn in_dialog(ua: &Ua, method: &str, cseq: u32, ok: &[u8]) -> String {
    let target = contacts(ok)
        .first()
        .expect("a Contact in the 2xx")
        .uri
        .clone();
    let mut routes = header_values(ok, "Record-Route");
    assert!(
        !routes.is_empty(),
        "record-routed: {}",
        String::from_utf8_lossy(ok)
    );
    routes.reverse();
    let mut m = format!(
        "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch={b};rport\r\n",
        a = ua.addr,
        b = unique("z9hG4bK-"),
    );
    for r in routes {
        m.push_str(&format!("Route: {r}\r\n"));
    }
    m.push_str(&format!(
        "Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {id}\r\nCSeq: {cseq} {method}\r\n\
         Content-Length: 0\r\n\r\n",
        from = header_value(ok, "From").unwrap(),
        to = header_value(ok, "To").unwrap(),
        id = call_id_of(ok),
    ));
    m
}

/// `user` calls `ruri` from `ua` with digest credentials: the INVITE, its 407 (ACKed), then
/// the INVITE again with Proxy-Authorization (CSeq 2). Returns the second INVITE.
fn call_as(ua: &Ua, ruri: &str, user: &str, password: &str) -> Invite {
    let id = unique("auth-call-");
    let first = invite(ua, ruri, user, 1, &id, "");
    ua.send(&first.text);
    let ch = ua.final_response("INVITE", &id);
    assert_status(&ch, 407);
    ua.send(ack_failure(&first, &ch));
    let m = Message::parse(&ch).unwrap();
    let params =
        sipshard::auth::client::first_supported_challenge(&m, HeaderName::ProxyAuthenticate)
            .expect("a challenge we can answer");
    let creds = sipshard::auth::client_response(
        &params,
        user,
        password,
        b"INVITE",
        ruri.as_bytes(),
        1,
        "0a4f113b",
    )
    .unwrap();
    let again = invite(
        ua,
        ruri,
        user,
        2,
        &id,
        &format!("Proxy-Authorization: {creds}\r\n"),
    );
    ua.send(&again.text);
    again
}

/// The first of `uas` to get the INVITE of `call_id`: its index and the INVITE.
fn first_invite(uas: &[&Ua], call_id: &str) -> (usize, Vec<u8>) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        for (i, ua) in uas.iter().enumerate() {
            let got = ua.try_wait(Duration::from_millis(10), |m| {
                is_request(m, "INVITE", call_id)
            });
            if let Some(m) = got {
                return (i, m);
            }
        }
    }
    panic!("no member got the INVITE of {call_id}");
}

// ---------------------------------------------------------------------------------------------
// Servers and plans.

/// A trunk section for `ua`, with `extra` lines.
fn trunk(name: &str, ua: &Ua, extra: &str) -> String {
    format!(
        "[[trunk]]\nname = \"{name}\"\naddress = \"{}\"\n{extra}\n",
        ua.addr
    )
}

/// A server with `--shards 2`, the configuration `cfg_text` and `args`; every UA of `uas`
/// (made before it, so that the plan can name their addresses) then talks to it.
fn server(cfg_text: &str, args: &[&str], uas: &[&Ua]) -> ServerProcess {
    let cfg = config_file(cfg_text);
    let mut all = vec!["--shards", "2", "--config", cfg.as_str()];
    all.extend_from_slice(args);
    let s = ServerProcess::start(&all);
    for ua in uas {
        ua.server.set(s.addr);
    }
    s
}

/// Two trunks a and b without checks, a route for +49 through a then b, `^0` normalised to
/// `+49`.
fn two_trunks(a: &Ua, b: &Ua, extra: &str) -> String {
    format!(
        "{}{}\
         [[route]]\nprefix = \"+49\"\ntrunks = [\"a\", \"b\"]\n\n\
         [normalize]\nrules = [{{ match = \"^0\", replace = \"+49\" }}]\n\n{extra}",
        trunk("a", a, "check_interval_ms = 0"),
        trunk("b", b, "check_interval_ms = 0"),
    )
}

// ---------------------------------------------------------------------------------------------
// Routes and trunks.

/// 030123 is normalised to +4930123 and sent to trunk a as `sip:+4930123@<a>`; a's 503 sends
/// it on to b, whose 180 and 200 reach the caller; the caller's ACK and BYE follow the
/// Record-Route to b, and b's 200 to the BYE comes back.
#[test]
fn a_normalised_number_fails_over_from_503_to_the_next_trunk_and_the_call_completes() {
    let (a, b, caller) = (Ua::new(), Ua::new(), Ua::new());
    let s = server(&two_trunks(&a, &b, ""), &[], &[&a, &b, &caller]);
    let inv = call(&caller, &format!("sip:030123@127.0.0.1:{}", s.addr.port()));
    let id = &inv.call_id;
    let at_a = a.request("INVITE", id);
    assert_eq!(ruri(&at_a), format!("sip:+4930123@{}", a.addr));
    b.expect_none("b waits for a", Duration::from_millis(100), |m| {
        is_request(m, "INVITE", id)
    });
    a.respond(&at_a, 503, "Service Unavailable");
    let at_b = b.request("INVITE", id);
    assert_eq!(ruri(&at_b), format!("sip:+4930123@{}", b.addr));
    b.respond(&at_b, 180, "Ringing");
    caller.response_with(180, "INVITE", id);
    b.respond(&at_b, 200, "OK");
    let ok = caller.final_response("INVITE", id);
    assert_status(&ok, 200);
    assert_eq!(
        header_value(&ok, "Contact").as_deref(),
        Some(format!("<sip:ua@{}>", b.addr).as_str())
    );
    caller.send(in_dialog(&caller, "ACK", 1, &ok));
    let ack = b.request("ACK", id);
    assert_eq!(ruri(&ack), format!("sip:ua@{}", b.addr));
    caller.send(in_dialog(&caller, "BYE", 2, &ok));
    let bye = b.request("BYE", id);
    b.respond(&bye, 200, "OK");
    assert_status(&caller.final_response("BYE", id), 200);
    // a's 503 was never relayed: the caller's only final response to the INVITE was b's 200.
    caller.expect_none("a's 503", Duration::from_millis(50), |m| {
        is_response(m, "INVITE", id) && code(m) >= 300
    });
}

/// A trunk that says nothing at all is left after routing.trunk_timeout_ms (500 here): b gets
/// the INVITE between 0.5 and 2 s after the call started. A 486 from a is an answer: relayed
/// to the caller, and b gets nothing.
#[test]
fn a_silent_trunk_is_left_after_the_trunk_timeout_and_a_busy_one_ends_the_call() {
    let (a, b, caller) = (Ua::new(), Ua::new(), Ua::new());
    let plan = two_trunks(&a, &b, "[routing]\ntrunk_timeout_ms = 500\n");
    let s = server(&plan, &[], &[&a, &b, &caller]);
    let ruri_ = format!("sip:+4930123@{}", s.addr);
    let started = Instant::now();
    let inv = call(&caller, &ruri_);
    a.request("INVITE", &inv.call_id);
    let at_b = b.request("INVITE", &inv.call_id);
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(450) && after <= Duration::from_secs(2),
        "b got the INVITE {after:?} after the call started"
    );
    b.respond(&at_b, 486, "Busy Here");
    let fin = caller.final_response("INVITE", &inv.call_id);
    assert!(code(&fin) >= 400, "{}", String::from_utf8_lossy(&fin));

    let inv = call(&caller, &ruri_);
    let at_a = a.request("INVITE", &inv.call_id);
    a.respond(&at_a, 486, "Busy Here");
    assert_status(&caller.final_response("INVITE", &inv.call_id), 486);
    b.expect_none(
        "busy is not a routing failure",
        Duration::from_millis(800),
        |m| is_request(m, "INVITE", &inv.call_id),
    );
}

/// Trunks checked every 200 ms and down after 2 unanswered checks: a never answers its
/// OPTIONS, b does. A second after the start a call goes straight to b (within 300 ms) and a
/// gets no INVITE; once a answers its checks again, the next call goes to a first.
#[test]
fn a_trunk_that_misses_its_checks_is_skipped_without_delay_and_comes_back() {
    let (a, b, caller) = (Ua::new(), Ua::new(), Ua::new());
    a.set_answer_options(false);
    let checks = "check_interval_ms = 200\ndown_after = 2";
    let plan = format!(
        "{}{}[[route]]\nprefix = \"+49\"\ntrunks = [\"a\", \"b\"]\n",
        trunk("a", &a, checks),
        trunk("b", &b, checks)
    );
    let s = server(&plan, &[], &[&a, &b, &caller]);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(b.options_answered() >= 3, "b answered its checks");
    let started = Instant::now();
    let inv = call(&caller, &format!("sip:+4930123@{}", s.addr));
    let at_b = b.request("INVITE", &inv.call_id);
    assert!(
        started.elapsed() <= Duration::from_millis(300),
        "b got the INVITE only after {:?}",
        started.elapsed()
    );
    b.respond(&at_b, 486, "Busy Here");
    assert_status(&caller.final_response("INVITE", &inv.call_id), 486);
    a.expect_none("a is down", Duration::from_millis(100), |m| {
        Message::parse(m).is_ok_and(|p| p.method_bytes() == Some(&b"INVITE"[..]))
    });

    // a answers again: its next check brings it back.
    a.set_answer_options(true);
    let deadline = Instant::now() + WAIT;
    while a.options_answered() == 0 {
        assert!(Instant::now() < deadline, "the server stopped checking a");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    let inv = call(&caller, &format!("sip:+4930123@{}", s.addr));
    let at_a = a.request("INVITE", &inv.call_id);
    a.respond(&at_a, 486, "Busy Here");
    assert_status(&caller.final_response("INVITE", &inv.call_id), 486);
    b.expect_none("a is back and answered", Duration::from_millis(100), |m| {
        is_request(m, "INVITE", &inv.call_id)
    });
}

/// `lcr = true` orders the route's trunks by their rate for the number: a costs 0.02 for +49,
/// b 0.01 for +4930 (and nothing known for the rest). Berlin goes to b first, Munich to a.
#[test]
fn least_cost_routing_orders_the_trunks_by_the_longest_rate_prefix() {
    let (a, b, caller) = (Ua::new(), Ua::new(), Ua::new());
    let plan = format!(
        "{}{}[[route]]\nprefix = \"+49\"\ntrunks = [\"a\", \"b\"]\nlcr = true\n\n\
         [[rate]]\ntrunk = \"a\"\nprefix = \"+49\"\ncost = 0.02\n\n\
         [[rate]]\ntrunk = \"b\"\nprefix = \"+4930\"\ncost = 0.01\n",
        trunk("a", &a, "check_interval_ms = 0"),
        trunk("b", &b, "check_interval_ms = 0")
    );
    let s = server(&plan, &[], &[&a, &b, &caller]);
    for (number, first, other) in [("+4930123", &b, &a), ("+4989123", &a, &b)] {
        let inv = call(&caller, &format!("sip:{number}@{}", s.addr));
        let got = first.request("INVITE", &inv.call_id);
        assert_eq!(ruri(&got), format!("sip:{number}@{}", first.addr));
        first.respond(&got, 486, "Busy Here");
        assert_status(&caller.final_response("INVITE", &inv.call_id), 486);
        other.expect_none(number, Duration::from_millis(100), |m| {
            is_request(m, "INVITE", &inv.call_id)
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Callers: inbound trunks, classes of service, emergency calls.

/// A call from trunk b's `inbound_from` address (127.0.0.5) to the extension +4930555 reaches
/// alice's registered phone without a digest challenge; its call to +4930777 (routed to a
/// trunk) gets 404 (no transit); the same call from any other address is challenged (407).
#[test]
fn an_inbound_trunk_reaches_extensions_without_a_challenge_but_no_trunk() {
    let (b, alice, other) = (Ua::on("127.0.0.5"), Ua::new(), Ua::new());
    let plan = format!(
        "{}[[route]]\nprefix = \"+49\"\ntrunks = [\"b\"]\n\n\
         [[extension]]\nnumber = \"+4930555\"\nuser = \"alice\"\n",
        trunk(
            "b",
            &b,
            "check_interval_ms = 0\ninbound_from = [\"127.0.0.5\"]"
        )
    );
    let s = server(
        &plan,
        &["--user", "alice:secret", "--user", "carol:pw"],
        &[&b, &alice, &other],
    );
    alice.register("alice", Some("secret"));

    let inv = invite(
        &b,
        &format!("sip:+4930555@{}", s.addr),
        "trunk",
        1,
        &unique("did-"),
        "",
    );
    b.send(&inv.text);
    let at_alice = alice.request("INVITE", &inv.call_id);
    assert_eq!(ruri(&at_alice), format!("sip:alice@{}", alice.addr));
    alice.respond(&at_alice, 486, "Busy Here");
    assert_status(&b.final_response("INVITE", &inv.call_id), 486);
    b.expect_none("no challenge", Duration::from_millis(50), |m| {
        is_response(m, "INVITE", &inv.call_id) && code(m) == 407
    });

    let transit = invite(
        &b,
        &format!("sip:+4930777@{}", s.addr),
        "trunk",
        1,
        &unique("transit-"),
        "",
    );
    b.send(&transit.text);
    assert_status(&b.final_response("INVITE", &transit.call_id), 404);
    b.expect_none("no transit", Duration::from_millis(100), |m| {
        is_request(m, "INVITE", &transit.call_id)
    });

    let inv = invite(
        &other,
        &format!("sip:+4930555@{}", s.addr),
        "trunk",
        1,
        &unique("not-trunk-"),
        "",
    );
    other.send(&inv.text);
    assert_status(&other.final_response("INVITE", &inv.call_id), 407);
    alice.expect_none("challenged first", Duration::from_millis(50), |m| {
        is_request(m, "INVITE", &inv.call_id)
    });
}

/// carol has only the default class (internal): her call to +4930123, on a route that needs
/// class national, gets 403 naming the class. Her call to 112 goes out through the emergency
/// trunk b anyway, as `sip:112@<b>` with `Priority: emergency`.
#[test]
fn classes_of_service_refuse_a_route_but_never_an_emergency_call() {
    let (a, b, carol) = (Ua::new(), Ua::new(), Ua::new());
    let plan = format!(
        "{}{}[[route]]\nprefix = \"+49\"\ntrunks = [\"a\"]\nclass = \"national\"\n\n\
         [routing]\ndefault_classes = [\"internal\"]\n\n\
         [classes]\nalice = [\"internal\", \"national\"]\n\n\
         [emergency]\nnumbers = [\"112\"]\ntrunks = [\"b\"]\n",
        trunk("a", &a, "check_interval_ms = 0"),
        trunk("b", &b, "check_interval_ms = 0")
    );
    let s = server(
        &plan,
        &["--user", "alice:secret", "--user", "carol:pw"],
        &[&a, &b, &carol],
    );
    let inv = call_as(&carol, &format!("sip:+4930123@{}", s.addr), "carol", "pw");
    let r = carol.response_with(403, "INVITE", &inv.call_id);
    assert!(
        reason(&r).contains("class of service national"),
        "{}",
        reason(&r)
    );
    a.expect_none("refused", Duration::from_millis(50), |m| {
        is_request(m, "INVITE", &inv.call_id)
    });

    let inv = call_as(&carol, &format!("sip:112@{}", s.addr), "carol", "pw");
    let at_b = b.request("INVITE", &inv.call_id);
    assert_eq!(ruri(&at_b), format!("sip:112@{}", b.addr));
    assert_eq!(
        header_value(&at_b, "Priority").as_deref(),
        Some("emergency")
    );
    b.respond(&at_b, 486, "Busy Here");
    assert_status(&carol.final_response("INVITE", &inv.call_id), 486);
}

// ---------------------------------------------------------------------------------------------
// Groups and paging.

const GROUPS: &str = r#"
[[group]]
number = "600"
members = ["alice", "bob"]
strategy = "parallel"
ring_ms = 5000

[[group]]
number = "601"
members = ["alice", "bob"]
strategy = "sequential"
ring_ms = 1000

[[group]]
number = "602"
members = ["alice", "bob"]
strategy = "round-robin"
ring_ms = 1000

[[paging]]
number = "700"
members = ["alice", "bob"]
"#;

/// A server with [`GROUPS`] and no users, alice and bob registered from their own phones.
fn group_server() -> (ServerProcess, Ua, Ua, Ua) {
    let (alice, bob, caller) = (Ua::new(), Ua::new(), Ua::new());
    let s = server(GROUPS, &[], &[&alice, &bob, &caller]);
    alice.register("alice", None);
    bob.register("bob", None);
    (s, alice, bob, caller)
}

/// Group 600 rings alice and bob at once; bob rings, alice answers: the caller gets alice's
/// 200, bob's leg is cancelled (answered 200 and 487), and the caller's ACK reaches alice.
#[test]
fn a_parallel_group_rings_every_member_and_cancels_the_rest_on_answer() {
    let (_s, alice, bob, caller) = group_server();
    let inv = call(&caller, "sip:600@localhost");
    let id = &inv.call_id;
    let at_alice = alice.request("INVITE", id);
    let at_bob = bob.request("INVITE", id);
    assert_eq!(ruri(&at_alice), format!("sip:alice@{}", alice.addr));
    assert_eq!(ruri(&at_bob), format!("sip:bob@{}", bob.addr));
    bob.respond(&at_bob, 180, "Ringing");
    caller.response_with(180, "INVITE", id);
    alice.respond(&at_alice, 200, "OK");
    let ok = caller.final_response("INVITE", id);
    assert_status(&ok, 200);
    let cancel = bob.request("CANCEL", id);
    assert_eq!(top_branch(&cancel), top_branch(&at_bob));
    bob.respond(&cancel, 200, "OK");
    bob.respond(&at_bob, 487, "Request Terminated");
    caller.send(in_dialog(&caller, "ACK", 1, &ok));
    alice.request("ACK", id);
    caller.expect_none("one answer", Duration::from_millis(100), |m| {
        is_response(m, "INVITE", id) && code(m) > 200
    });
}

/// Group 601 rings alice alone for ring_ms (1 s), then cancels her and rings bob.
#[test]
fn a_sequential_group_rings_members_in_turn_for_ring_ms_each() {
    let (_s, alice, bob, caller) = group_server();
    let inv = call(&caller, "sip:601@localhost");
    let id = &inv.call_id;
    let at_alice = alice.request("INVITE", id);
    let rang = Instant::now();
    alice.respond(&at_alice, 180, "Ringing");
    caller.response_with(180, "INVITE", id);
    bob.expect_none("bob waits his turn", Duration::from_millis(600), |m| {
        is_request(m, "INVITE", id)
    });
    let cancel = alice.request("CANCEL", id);
    let after = rang.elapsed();
    assert!(
        after >= Duration::from_millis(800) && after <= Duration::from_millis(2000),
        "alice rang for {after:?}"
    );
    let at_bob = bob.request("INVITE", id);
    assert_eq!(ruri(&at_bob), format!("sip:bob@{}", bob.addr));
    alice.respond(&cancel, 200, "OK");
    alice.respond(&at_alice, 487, "Request Terminated");
    bob.respond(&at_bob, 486, "Busy Here");
    let fin = caller.final_response("INVITE", id);
    assert!(code(&fin) >= 400, "{}", String::from_utf8_lossy(&fin));
}

/// Group 602 starts each call with the member after the one who started the last: alice, bob,
/// alice. Each call comes from a new caller socket (so it may arrive on either shard).
#[test]
fn a_round_robin_group_starts_with_the_next_member_each_call() {
    let (s, alice, bob, _caller) = group_server();
    let mut first = Vec::new();
    for _ in 0..3 {
        let caller = Ua::new();
        caller.server.set(s.addr);
        let inv = call(&caller, "sip:602@localhost");
        let id = &inv.call_id;
        let (who, leg) = first_invite(&[&alice, &bob], id);
        first.push(["alice", "bob"][who]);
        let (now, next) = if who == 0 {
            (&alice, &bob)
        } else {
            (&bob, &alice)
        };
        now.respond(&leg, 486, "Busy Here");
        // The other member rings next; busy too.
        if let Some(leg) = next.try_wait(WAIT, |m| is_request(m, "INVITE", id)) {
            next.respond(&leg, 486, "Busy Here");
        }
        let fin = caller.final_response("INVITE", id);
        assert!(code(&fin) >= 400, "{}", String::from_utf8_lossy(&fin));
    }
    assert_eq!(first, ["alice", "bob", "alice"]);
}

/// Paging 700: alice and bob each get an INVITE with both auto-answer headers.
#[test]
fn paging_reaches_every_member_with_auto_answer_headers() {
    let (_s, alice, bob, caller) = group_server();
    let inv = call(&caller, "sip:700@localhost");
    for (phone, user) in [(&alice, "alice"), (&bob, "bob")] {
        let got = phone.request("INVITE", &inv.call_id);
        assert_eq!(ruri(&got), format!("sip:{user}@{}", phone.addr));
        assert_eq!(
            header_value(&got, "Call-Info").as_deref(),
            Some("<sip:localhost>;answer-after=0"),
            "{user}"
        );
        assert_eq!(
            header_value(&got, "Alert-Info").as_deref(),
            Some("<http://localhost/>;info=alert-autoanswer"),
            "{user}"
        );
        phone.respond(&got, 486, "Busy Here");
    }
    let fin = caller.final_response("INVITE", &inv.call_id);
    assert!(code(&fin) >= 400, "{}", String::from_utf8_lossy(&fin));
}

// ---------------------------------------------------------------------------------------------
// Bad plans and reloads.

/// Runs the binary with `args` until it exits (at most 5 s): its exit code and stderr.
fn run_to_exit(args: &[&str]) -> (i32, String) {
    use std::io::Read;
    let mut child = Command::new(binary())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?}: still running after 5 s (the plan was accepted)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code().unwrap_or(-1), err)
}

/// A plan with a route naming an unknown trunk, a normalisation rule that is not a regular
/// expression or a route in an unknown time zone stops the server at start: exit code 2 and
/// one line naming the key.
#[test]
fn a_bad_plan_stops_the_server_at_start_with_one_line() {
    let trunk_a = "[[trunk]]\nname = \"a\"\naddress = \"127.0.0.1:5071\"\ncheck_interval_ms = 0\n";
    for (plan, needles) in [
        (
            format!("{trunk_a}[[route]]\nprefix = \"+49\"\ntrunks = [\"c\"]\n"),
            vec!["[[route]] 1", "unknown trunk"],
        ),
        (
            format!("{trunk_a}[normalize]\nrules = [{{ match = \"^(0\", replace = \"+\" }}]\n"),
            vec!["normalize.rules 1", "^(0"],
        ),
        (
            format!(
                "{trunk_a}[[route]]\nprefix = \"+49\"\ntrunks = [\"a\"]\ntimezone = \"Europe/Berln\"\n"
            ),
            vec!["[[route]] 1", "Europe/Berln"],
        ),
        (
            trunk_a.replace("check_interval_ms", "transport = \"sctp\"\ncheck_interval_ms"),
            vec!["[[trunk]] 1", "transport \"sctp\""],
        ),
        // A tcp trunk needs a tcp listen address to send from.
        (
            trunk_a.replace("check_interval_ms", "transport = \"tcp\"\ncheck_interval_ms"),
            vec!["[[trunk]] \"a\"", "--listen tcp:"],
        ),
    ] {
        let cfg = config_file(&plan);
        let listen = format!("udp:127.0.0.1:{}", free_port());
        let (code, err) = run_to_exit(&["--listen", &listen, "--shards", "1", "--config", &cfg]);
        assert_eq!(code, 2, "{plan}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{plan}: {err}");
        for n in needles {
            assert!(err.contains(n), "{n} in {err}");
        }
    }
}

/// SIGHUP re-reads the plan: +49 moves from trunk a to trunk b and the next call goes to b. A
/// plan with an unknown trunk is refused with an error line naming the route, and calls still
/// go to b.
#[test]
fn sighup_reloads_the_plan_and_a_bad_plan_changes_nothing() {
    let (a, b, caller) = (Ua::new(), Ua::new(), Ua::new());
    let trunks = format!(
        "{}{}",
        trunk("a", &a, "check_interval_ms = 0"),
        trunk("b", &b, "check_interval_ms = 0")
    );
    let route = |to: &str| format!("{trunks}[[route]]\nprefix = \"+49\"\ntrunks = [\"{to}\"]\n");
    let cfg = config_file(&route("a"));
    let log = std::path::Path::new(&cfg).with_file_name("server.log");
    let s = ServerProcess::start_logging_to(
        &["--shards", "2", "--config", &cfg, "--log", "info"],
        &log,
    );
    for ua in [&a, &b, &caller] {
        ua.server.set(s.addr);
    }
    let call_to = |trunk: &Ua, other: &Ua| {
        let inv = call(&caller, &format!("sip:+4930123@{}", s.addr));
        let got = trunk.request("INVITE", &inv.call_id);
        trunk.respond(&got, 486, "Busy Here");
        assert_status(&caller.final_response("INVITE", &inv.call_id), 486);
        other.expect_none("one trunk", Duration::from_millis(50), |m| {
            is_request(m, "INVITE", &inv.call_id)
        });
    };
    let log_lines = |needle: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let hup_and_wait_for = |needle: &str| {
        let before = log_lines(needle).len();
        // SAFETY: kill(2) with a pid of our own child and a valid signal number.
        let rc = unsafe { libc::kill(s.child.id() as libc::pid_t, libc::SIGHUP) };
        assert_eq!(rc, 0);
        let deadline = Instant::now() + WAIT;
        loop {
            let lines = log_lines(needle);
            if lines.len() > before {
                return lines.last().unwrap().clone();
            }
            assert!(
                Instant::now() < deadline,
                "no '{needle}' line in the log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    call_to(&a, &b);

    std::fs::write(&cfg, route("b")).unwrap();
    hup_and_wait_for("reloaded");
    call_to(&b, &a);

    std::fs::write(&cfg, route("c")).unwrap();
    let line = hup_and_wait_for("reload failed");
    assert!(
        line.contains("ERROR") && line.contains("[[route]] 1") && line.contains("unknown trunk"),
        "{line}"
    );
    call_to(&b, &a);
}
