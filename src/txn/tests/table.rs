//! The table: matching (RFC 3261 §17.1.3, §17.2.3), destinations, timers on the wheel and
//! cleanup.

use std::net::SocketAddr;

use super::super::{
    AckOutcome, ClientEvent, ClientKey, ClientState, Match, ServerState, TransactionTable,
    TxnConfig, TxnError, TxnEvent, TxnOut,
};
use super::client::{OUR_VIA, PROXIED_INVITE};
use super::{bytes, request, response, INVITE};
use crate::sip::{Message, Method};

const UAC_VIA: &str = "SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bKnashds8";

fn src() -> SocketAddr {
    "192.0.2.10:5060".parse().unwrap()
}

fn next_hop() -> SocketAddr {
    "192.0.2.4:5060".parse().unwrap()
}

fn sends(out: &[TxnOut]) -> Vec<(Vec<u8>, SocketAddr, u16)> {
    out.iter()
        .filter_map(|o| match o {
            TxnOut::Send { bytes, dst, socket } => Some((bytes.to_vec(), *dst, *socket)),
            _ => None,
        })
        .collect()
}

fn new_table() -> TransactionTable {
    TransactionTable::new(TxnConfig::default())
}

/// Polls at every deadline up to `until`, as a shard loop sleeping on `next_timeout` does.
fn run_until(t: &mut TransactionTable, until: u64, out: &mut Vec<TxnOut>) {
    while let Some(next) = t.next_timeout().filter(|&n| n <= until) {
        t.poll_timers(next, out);
    }
}

/// Feeds a request; creates the transaction when it is new.
fn receive(t: &mut TransactionTable, raw: &[u8], now: u64, out: &mut Vec<TxnOut>) -> Match {
    let msg = Message::parse(raw).unwrap();
    t.on_server_request(&msg, now, out).unwrap()
}

#[test]
fn server_invite_retransmission_ack_and_cleanup() {
    let mut t = new_table();
    let mut out = Vec::new();
    let Match::New(key) = receive(&mut t, INVITE, 0, &mut out) else {
        panic!("new INVITE")
    };
    let id = t
        .insert_server(key, Method::Invite, src(), 3, false)
        .unwrap();
    assert_eq!(t.len(), 1);
    let r486 = response(486, UAC_VIA, "INVITE", Some("srv"));
    t.server_respond(id, 486, bytes(&r486), 10, &mut out)
        .unwrap();
    assert_eq!(sends(&out), vec![(r486.clone(), src(), 3)]);
    // The retransmitted INVITE is absorbed and answered from the transaction.
    out.clear();
    assert_eq!(
        receive(&mut t, INVITE, 20, &mut out),
        Match::Retransmission(id)
    );
    assert_eq!(sends(&out), vec![(r486.clone(), src(), 3)]);
    // Timer G resends at 510 (10 + T1).
    out.clear();
    t.poll_timers(509, &mut out);
    assert!(out.is_empty());
    t.poll_timers(510, &mut out);
    assert_eq!(sends(&out).len(), 1);
    // The ACK (To tag of our response, same branch) matches the INVITE transaction.
    out.clear();
    let ack = request("ACK", UAC_VIA, Some("srv"));
    assert_eq!(
        receive(&mut t, &ack, 600, &mut out),
        Match::Ack(id, AckOutcome::Absorbed)
    );
    assert_eq!(t.server_state(id), Some(ServerState::Confirmed));
    // G (due at 1510) and H (32010) were disarmed lazily: their firings send nothing.
    t.poll_timers(5599, &mut out);
    assert!(out.is_empty());
    t.poll_timers(5600, &mut out);
    assert_eq!(
        out,
        vec![TxnOut::Server {
            id,
            event: TxnEvent::Terminated
        }]
    );
    assert_eq!(t.len(), 0);
    assert_eq!(t.server_state(id), None);
    assert_eq!(
        t.server_respond(id, 200, bytes(&r486), 5600, &mut out),
        Err(TxnError::Unknown)
    );
    // Once the stale wheel entries are gone the table holds nothing.
    out.clear();
    t.poll_timers(40_000, &mut out);
    assert!(out.is_empty());
    assert_eq!(t.pending_timers(), 0);
    // Another transaction takes the freed slot; a late retransmission of the INVITE is a
    // new request, not a match for it.
    let options = request("OPTIONS", UAC_VIA, None);
    let other = t
        .new_server(&Message::parse(&options).unwrap(), src(), 0, false)
        .unwrap();
    assert_eq!(t.server_state(id), None);
    assert_eq!(t.server_state(other), Some(ServerState::Trying));
    assert!(matches!(
        receive(&mut t, INVITE, 40_000, &mut out),
        Match::New(_)
    ));
}

#[test]
fn server_timer_h_reports_timeout_to_the_tu() {
    let mut t = new_table();
    let mut out = Vec::new();
    let id = t
        .new_server(&Message::parse(INVITE).unwrap(), src(), 0, false)
        .unwrap();
    let r = response(500, UAC_VIA, "INVITE", Some("srv"));
    t.server_respond(id, 500, bytes(&r), 0, &mut out).unwrap();
    out.clear();
    run_until(&mut t, 31_999, &mut out);
    // G at 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5 s.
    assert_eq!(sends(&out).len(), 10);
    out.clear();
    t.poll_timers(32_000, &mut out);
    assert_eq!(
        out,
        vec![
            TxnOut::Server {
                id,
                event: TxnEvent::Timeout
            },
            TxnOut::Server {
                id,
                event: TxnEvent::Terminated
            }
        ]
    );
    assert!(t.is_empty());
}

#[test]
fn server_accepted_passes_ack_to_tu_and_unmatched_ack() {
    let mut t = new_table();
    let mut out = Vec::new();
    let id = t
        .new_server(&Message::parse(INVITE).unwrap(), src(), 0, false)
        .unwrap();
    let ok = response(200, UAC_VIA, "INVITE", Some("srv"));
    t.server_respond(id, 200, bytes(&ok), 0, &mut out).unwrap();
    out.clear();
    assert_eq!(
        receive(&mut t, INVITE, 100, &mut out),
        Match::Retransmission(id)
    );
    assert!(out.is_empty(), "Accepted absorbs INVITE retransmissions");
    let ack = request("ACK", UAC_VIA, Some("srv"));
    assert_eq!(
        receive(&mut t, &ack, 200, &mut out),
        Match::Ack(id, AckOutcome::PassToTu)
    );
    // The usual 2xx ACK has a new branch: no transaction.
    let ack2 = request(
        "ACK",
        "SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bKnew",
        Some("srv"),
    );
    assert_eq!(receive(&mut t, &ack2, 300, &mut out), Match::UnmatchedAck);
    assert_eq!(
        t.new_server(&Message::parse(&ack2).unwrap(), src(), 0, false),
        Err(TxnError::Ack)
    );
    t.poll_timers(32_000, &mut out);
    assert_eq!(
        out,
        vec![TxnOut::Server {
            id,
            event: TxnEvent::Terminated
        }]
    );
    assert!(t.is_empty());
}

#[test]
fn server_transport_error_ends_the_transaction() {
    let mut t = new_table();
    let mut out = Vec::new();
    let id = t
        .new_server(&Message::parse(INVITE).unwrap(), src(), 0, false)
        .unwrap();
    let r = response(486, UAC_VIA, "INVITE", Some("srv"));
    t.server_respond(id, 486, bytes(&r), 0, &mut out).unwrap();
    out.clear();
    t.server_transport_error(id, &mut out);
    assert_eq!(
        out,
        vec![
            TxnOut::Server {
                id,
                event: TxnEvent::TransportError
            },
            TxnOut::Server {
                id,
                event: TxnEvent::Terminated
            }
        ]
    );
    assert!(t.is_empty());
    out.clear();
    run_until(&mut t, 40_000, &mut out);
    assert!(
        out.is_empty(),
        "the lazily cancelled G and H fire into nothing"
    );
}

#[test]
fn cancel_is_its_own_transaction_and_finds_its_invite() {
    let mut t = new_table();
    let mut out = Vec::new();
    let invite = t
        .new_server(&Message::parse(INVITE).unwrap(), src(), 0, false)
        .unwrap();
    let cancel_raw = request("CANCEL", UAC_VIA, None);
    let cancel = Message::parse(&cancel_raw).unwrap();
    assert_eq!(t.cancel_target(&cancel), Some(invite));
    let Match::New(key) = t.on_server_request(&cancel, 10, &mut out).unwrap() else {
        panic!("CANCEL is a new transaction")
    };
    let c = t
        .insert_server(key, Method::Cancel, src(), 0, false)
        .unwrap();
    assert_ne!(c, invite);
    assert_eq!(t.server_state(c), Some(ServerState::Trying));
    assert_eq!(t.server_lookup(&cancel), Some(c));
    assert_eq!(
        t.server_lookup(&Message::parse(INVITE).unwrap()),
        Some(invite)
    );
    assert_eq!(
        t.new_server(&cancel, src(), 0, false),
        Err(TxnError::Exists)
    );
    // Another sent-by or another branch: no target.
    let other = request(
        "CANCEL",
        "SIP/2.0/UDP pc34.atlanta.example.com:5060;branch=z9hG4bKnashds8",
        None,
    );
    assert_eq!(t.cancel_target(&Message::parse(&other).unwrap()), None);
}

#[test]
fn rfc2543_ack_matches_by_the_to_tag_of_our_response() {
    let mut t = new_table();
    let mut out = Vec::new();
    let via = "SIP/2.0/UDP old.example.com:5060";
    let invite = request("INVITE", via, None);
    let id = t
        .new_server(&Message::parse(&invite).unwrap(), src(), 0, false)
        .unwrap();
    let r = response(404, via, "INVITE", Some("ours"));
    t.server_respond(id, 404, bytes(&r), 0, &mut out).unwrap();
    assert_eq!(
        receive(&mut t, &invite, 10, &mut out),
        Match::Retransmission(id)
    );
    let wrong = request("ACK", via, Some("theirs"));
    assert_eq!(receive(&mut t, &wrong, 20, &mut out), Match::UnmatchedAck);
    let ack = request("ACK", via, Some("ours"));
    assert_eq!(
        receive(&mut t, &ack, 30, &mut out),
        Match::Ack(id, AckOutcome::Absorbed)
    );
}

#[test]
fn client_invite_through_the_table() {
    let mut t = new_table();
    let mut out = Vec::new();
    let key = ClientKey::for_request(&Message::parse(PROXIED_INVITE).unwrap()).unwrap();
    let id = t
        .new_client(
            key.clone(),
            bytes(PROXIED_INVITE),
            next_hop(),
            1,
            false,
            0,
            &mut out,
        )
        .unwrap();
    assert_eq!(sends(&out), vec![(PROXIED_INVITE.to_vec(), next_hop(), 1)]);
    assert_eq!(t.next_timeout(), Some(500));
    assert_eq!(
        t.new_client(
            key,
            bytes(PROXIED_INVITE),
            next_hop(),
            1,
            false,
            0,
            &mut out
        ),
        Err(TxnError::Exists)
    );
    out.clear();
    t.poll_timers(500, &mut out);
    assert_eq!(sends(&out), vec![(PROXIED_INVITE.to_vec(), next_hop(), 1)]);
    out.clear();
    let r180 = response(180, OUR_VIA, "INVITE", Some("a6c85cf"));
    assert_eq!(
        t.on_response(&Message::parse(&r180).unwrap(), 600, &mut out),
        Some((id, ClientEvent::Provisional { status: 180 }))
    );
    t.poll_timers(1500, &mut out);
    assert!(out.is_empty(), "no retransmission in Proceeding");
    // A response to the same branch but another method is not ours.
    let other = response(200, OUR_VIA, "CANCEL", None);
    assert_eq!(
        t.on_response(&Message::parse(&other).unwrap(), 700, &mut out),
        None
    );
    let r486 = response(486, OUR_VIA, "INVITE", Some("a6c85cf"));
    let (_, ev) = t
        .on_response(&Message::parse(&r486).unwrap(), 2000, &mut out)
        .unwrap();
    assert_eq!(ev, ClientEvent::Final { status: 486 });
    let sent = sends(&out);
    assert_eq!(sent.len(), 1);
    assert!(sent[0].0.starts_with(b"ACK sip:bob@192.0.2.4 SIP/2.0\r\n"));
    assert_eq!((sent[0].1, sent[0].2), (next_hop(), 1));
    assert_eq!(t.client_state(id), Some(ClientState::Completed));
    out.clear();
    assert_eq!(
        t.on_response(&Message::parse(&r486).unwrap(), 2500, &mut out),
        Some((id, ClientEvent::Absorbed))
    );
    assert_eq!(sends(&out).len(), 1, "ACK resent");
    out.clear();
    t.poll_timers(33_999, &mut out);
    assert!(out.is_empty());
    t.poll_timers(34_000, &mut out);
    assert_eq!(
        out,
        vec![TxnOut::Client {
            id,
            event: TxnEvent::Terminated
        }]
    );
    assert!(t.is_empty());
    // The freed slot goes to another transaction; the old branch's responses are stray.
    let key = ClientKey::new(b"z9hG4bKp9", b"INVITE");
    t.new_client(
        key,
        bytes(PROXIED_INVITE),
        next_hop(),
        1,
        false,
        35_000,
        &mut out,
    )
    .unwrap();
    assert_eq!(
        t.on_response(&Message::parse(&r486).unwrap(), 35_000, &mut out),
        None
    );
}

#[test]
fn client_non_invite_timeout_and_transport_error() {
    let mut t = new_table();
    let mut out = Vec::new();
    let req = request("OPTIONS", OUR_VIA, None);
    let key = ClientKey::new(b"z9hG4bKp1", b"OPTIONS");
    let id = t
        .new_client(key, bytes(&req), next_hop(), 0, false, 1000, &mut out)
        .unwrap();
    out.clear();
    run_until(&mut t, 32_999, &mut out);
    // E at 1.5, 2.5, 4.5, 8.5 s, then every 4 s: 12.5 ... 32.5 s.
    assert_eq!(sends(&out).len(), 10);
    out.clear();
    t.poll_timers(33_000, &mut out);
    assert_eq!(
        out,
        vec![
            TxnOut::Client {
                id,
                event: TxnEvent::Timeout
            },
            TxnOut::Client {
                id,
                event: TxnEvent::Terminated
            }
        ]
    );
    assert!(t.is_empty());
    // Transport errors end a transaction at once.
    let key = ClientKey::new(b"z9hG4bKp2", b"OPTIONS");
    let id = t
        .new_client(key, bytes(&req), next_hop(), 0, true, 0, &mut out)
        .unwrap();
    out.clear();
    t.client_transport_error(id, &mut out);
    assert_eq!(
        out,
        vec![
            TxnOut::Client {
                id,
                event: TxnEvent::TransportError
            },
            TxnOut::Client {
                id,
                event: TxnEvent::Terminated
            }
        ]
    );
    assert!(t.is_empty());
}

#[test]
fn every_transaction_is_removed_when_its_timers_run_out() {
    let mut t = new_table();
    let mut out = Vec::new();
    for i in 0..50u32 {
        let via = format!("SIP/2.0/UDP h{i}.example.com:5060;branch=z9hG4bKs{i}");
        let method = ["INVITE", "OPTIONS", "BYE"][i as usize % 3];
        let raw = request(method, &via, None);
        let id = t
            .new_server(&Message::parse(&raw).unwrap(), src(), 0, i % 2 == 0)
            .unwrap();
        let status = [100, 180, 200, 486][i as usize % 4];
        let resp = response(status, &via, method, Some("t"));
        t.server_respond(id, status, bytes(&resp), i as u64, &mut out)
            .unwrap();
        if status == 100 {
            t.server_respond(id, 408, bytes(&resp), 100, &mut out)
                .unwrap();
        }
        let creq = request(method, &format!("SIP/2.0/UDP p;branch=z9hG4bKc{i}"), None);
        let key = ClientKey::for_request(&Message::parse(&creq).unwrap()).unwrap();
        t.new_client(
            key,
            bytes(&creq),
            next_hop(),
            0,
            i % 3 == 0,
            i as u64,
            &mut out,
        )
        .unwrap();
    }
    // Reliable non-INVITE servers with a final response ended at once (Timer J is zero):
    // i even, not a multiple of 3: 16 of them.
    assert_eq!(t.len(), 84);
    run_until(&mut t, 200_000, &mut out);
    // Left: the server transactions that only sent 180 (i % 4 == 1), which wait for the
    // TU's final response; nothing else, and no timer.
    assert_eq!(t.len(), 13);
    assert_eq!(t.pending_timers(), 0);
}

#[test]
fn memory_per_transaction() {
    use super::super::table::entry_sizes;
    let (server, client, timer) = entry_sizes();
    let key = ClientKey::for_request(&Message::parse(PROXIED_INVITE).unwrap()).unwrap();
    println!(
        "server entry {server} B, client entry {client} B, wheel entry {timer} B, \
         client key {} B",
        key.bytes()
    );
    assert!(timer <= 40, "{timer}");
    assert!(server <= 128, "{server}");
    assert!(client <= 128, "{client}");
}
