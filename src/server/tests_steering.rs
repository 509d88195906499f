//! The kernel steering program (transport/steering.rs) against the server's own `owner`:
//! run in the kernel (BPF_PROG_TEST_RUN) on the messages a registrar and proxy get, it must
//! name the shard the core would hand the message to, or leave it to the kernel's hash.
//! Loading a BPF program needs root (CAP_BPF); without it the test prints SKIPPED, and
//! SIPSHARD_REQUIRE_BPF=1 (CI sets it) makes that a failure.

use super::tests::{addr, config, shard_core, LISTEN};
use super::Core;
use crate::proxy::settings::{Mode, ProxySettings};
use crate::registrar::RegistrarSettings;
use crate::transport::steering::SteeringProgram;
use std::sync::Arc;

fn core(shards: usize) -> Core {
    let cfg = config(
        shards,
        Mode::Proxy,
        RegistrarSettings::default(),
        ProxySettings::default(),
    );
    shard_core(0, Arc::new(cfg), None)
}

fn load(shards: usize) -> Option<SteeringProgram> {
    match SteeringProgram::load(shards) {
        Ok(p) => Some(p),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            if std::env::var_os("SIPSHARD_REQUIRE_BPF").is_some_and(|v| v == "1") {
                panic!("SIPSHARD_REQUIRE_BPF=1 but the steering program cannot load: {e}");
            }
            eprintln!("SKIPPED: the steering program cannot load here: {e}");
            None
        }
        Err(e) => panic!("the kernel refused the steering program: {e}"),
    }
}

fn register(to: &str, user: &str) -> Vec<u8> {
    format!(
        "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKr{user}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@localhost>;tag=r\r\n{to}\r\n\
         Call-ID: reg-{user}\r\nCSeq: 1 REGISTER\r\nContact: <sip:{user}@192.0.2.10:5060>\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn invite(ruri: &str, user: &str) -> Vec<u8> {
    format!(
        "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKi{user}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a\r\nTo: <{ruri}>\r\n\
         Call-ID: call-{user}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@192.0.2.10:5060>\r\n\
         Content-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n"
    )
    .into_bytes()
}

fn in_dialog(method: &str, ss: usize, user: &str) -> Vec<u8> {
    format!(
        "{method} sip:{user}@192.0.2.20:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKb{user}\r\n\
         Route: <sip:{LISTEN};lr;ss={ss}>\r\nMax-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a\r\n\
         To: <sip:{user}@localhost>;tag=b\r\nCall-ID: call-{user}\r\nCSeq: 2 {method}\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn response(ss: usize, n: usize) -> Vec<u8> {
    format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {LISTEN};branch=z9hG4bK-ss{ss}.{n:x}a7\r\n\
         Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKx{n}\r\nFrom: <sip:alice@localhost>;tag=a\r\n\
         To: <sip:u{n}@localhost>;tag=b\r\nCall-ID: call-{n}\r\nCSeq: 1 INVITE\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// The program's verdict: Some(shard), or None for "the kernel's hash".
fn steer(p: &SteeringProgram, msg: &[u8]) -> Option<usize> {
    let (index, _) = p.test_run(msg, 1).unwrap();
    (index != u32::MAX).then_some(index as usize)
}

#[test]
fn the_program_names_the_shard_the_core_hands_each_message_to() {
    for shards in [2, 3, 5] {
        let Some(p) = load(shards) else { return };
        let c = core(shards);
        let mut messages = Vec::new();
        for i in 0..60 {
            let u = format!("user{i}");
            messages.push(register(&format!("To: <sip:{u}@localhost>"), &u));
            messages.push(register(&format!("t: sip:{u}@localhost"), &u));
            messages.push(register(
                &format!("TO  :\t\"Sip Fan\" <SIPS:{u}@localhost:5061>"),
                &u,
            ));
            messages.push(invite(&format!("sip:{u}@localhost"), &u));
            messages.push(invite(&format!("sip:+4930{i}@127.0.0.1;user=phone"), &u));
            // Without a user: the host's shard (a keepalive OPTIONS to the server, a call to
            // a domain).
            let host = format!("Host{i}.Example.com");
            let options = String::from_utf8(invite(&format!("sip:{host}"), &u))
                .unwrap()
                .replace("INVITE", "OPTIONS");
            messages.push(options.into_bytes());
            messages.push(invite(&format!("sip:{host}:5070;transport=udp"), &u));
            messages.push(invite(&format!("sip:10.0.{i}.1"), &u));
            messages.push(in_dialog("BYE", i % shards, &u));
            messages.push(in_dialog("ACK", (i + 1) % shards, &u));
            messages.push(response(i % shards, i));
            // No Route of ours: the CANCEL goes where its INVITE went.
            let cancel = String::from_utf8(invite(&format!("sip:{u}@localhost"), &u))
                .unwrap()
                .replace("INVITE", "CANCEL")
                .replace(
                    "Content-Length: 4\r\n\r\nv=0\n",
                    "Content-Length: 0\r\n\r\n",
                );
            messages.push(cancel.into_bytes());
        }
        for m in &messages {
            let owner = c.owner_of(m);
            assert!(owner.is_some(), "{}", String::from_utf8_lossy(m));
            assert_eq!(
                steer(&p, m),
                owner,
                "{shards} shards: {}",
                String::from_utf8_lossy(m)
            );
        }
    }
}

#[test]
fn what_the_program_cannot_read_as_the_core_does_is_left_to_the_kernel() {
    let Some(p) = load(2) else { return };
    let c = core(2);
    // An escaped user (the core unescapes it), a URI without a user, a tel: URI, a
    // password, a response without our branch, garbage and an empty datagram.
    for m in [
        register("To: <sip:%61lice@localhost>", "alice"),
        register("To: <sip:localhost>", "x"),
        invite("tel:+4930123", "t"),
        invite("sip:bob:secret@localhost", "b"),
        invite("sip:bob;x=1@localhost", "b"),
        invite("sip:[2001:db8::1]:5060", "v6"),
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKzz\r\n\r\n".to_vec(),
        b"\x00\x01\x00\x00".to_vec(),
        Vec::new(),
        b"REGISTER sip:localhost SIP/2.0\r\nVia: x\r\n".to_vec(),
    ] {
        assert_eq!(steer(&p, &m), None, "{}", String::from_utf8_lossy(&m));
    }
    // The escaped user's real owner is found by the core, which hands it on.
    assert!(c
        .owner_of(&register("To: <sip:%61lice@localhost>", "alice"))
        .is_some());
    // An ;ss= naming no shard of ours is not believed (the Request-URI's user decides).
    assert_eq!(
        steer(&p, &in_dialog("BYE", 7, "u")),
        steer(&p, &invite("sip:u@192.0.2.20:5062", "u"))
    );
}

#[test]
fn a_header_far_into_the_message_is_found_and_one_past_the_scan_limit_left_to_the_kernel() {
    let Some(p) = load(3) else { return };
    let c = core(3);
    // The To header up to 1,500 bytes in.
    for pad in [0, 1, 200, 255, 256, 700, 1500] {
        for i in 0..10 {
            let u = format!("longuser{i}");
            let to = format!("X-Pad: {}\r\nTo: <sip:{u}@localhost>", "p".repeat(pad));
            let m = register(&to, &u);
            assert_eq!(steer(&p, &m), c.owner_of(&m), "pad {pad}");
        }
    }
    // Past the scan limit the kernel's hash decides.
    let m = register(
        &format!("X-Pad: {}\r\nTo: <sip:u@localhost>", "p".repeat(2100)),
        "u",
    );
    assert_eq!(steer(&p, &m), None);
}

#[test]
fn the_kernel_accepts_the_program_for_any_shard_count() {
    for shards in [2, 3, 4, 7, 8, 16, 64, 255] {
        let Some(p) = load(shards) else { return };
        let m = register("To: <sip:someone@localhost>", "someone");
        let (index, ns) = p.test_run(&m, 1000).unwrap();
        assert!((index as usize) < shards);
        eprintln!(
            "{shards} shards: {} instructions, {ns} ns per REGISTER in the kernel",
            p.len
        );
    }
}

#[test]
fn a_response_naming_a_shard_we_do_not_have_is_handled_where_it_arrives() {
    // A forged branch (or another server's) naming shard 99 of 2: no owner, so no hand-off
    // to a shard that does not exist (that indexed past the peers and killed the shard).
    let mut c = core(2);
    let forged = response(99, 1);
    assert_eq!(c.owner_of(&forged), None);
    let mut out = super::outbox::Outbox::new();
    let d = c.handle(
        &forged,
        addr("192.0.2.66:5060"),
        0,
        super::tests::T0,
        false,
        &mut out,
    );
    assert_eq!(d, super::Disposition::Done);
    assert_eq!(c.owner_of(&response(1, 1)), Some(1));
}

#[test]
fn while_consolidated_every_datagram_goes_to_the_first_socket() {
    let Some(p) = load(4) else { return };
    // Users whose REGISTERs the program steers past socket 0.
    let steered: Vec<(Vec<u8>, usize)> = (0..40)
        .map(|i| {
            let u = format!("user{i}");
            let m = register(&format!("To: <sip:{u}@localhost>"), &u);
            let s = steer(&p, &m).expect("a plain REGISTER is steered");
            (m, s)
        })
        .filter(|&(_, s)| s != 0)
        .collect();
    assert!(steered.len() > 10, "{} of 40 past socket 0", steered.len());
    p.set_all_to_first(true).unwrap();
    for (m, _) in &steered {
        assert_eq!(steer(&p, m), Some(0));
    }
    // Even what the program could not read goes to shard 0's socket, not the kernel's hash.
    assert_eq!(steer(&p, b"garbage"), Some(0));
    p.set_all_to_first(false).unwrap();
    for (m, s) in &steered {
        assert_eq!(steer(&p, m), Some(*s));
    }
    assert_eq!(steer(&p, b"garbage"), None);
}
