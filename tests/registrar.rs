//! The registrar (RFC 3261 §10.3, RFC 3327 Path, RFC 5626 instance/reg-id) over real UDP on
//! 127.0.0.1: one test per rule, each against a freshly started `sipshard`.

mod common;

use common::*;
use std::time::Duration;

const ALICE: &str = "sip:alice@localhost";
const A1: &str = "sip:alice@192.0.2.1:5060";
const A2: &str = "sip:alice@192.0.2.2:5060";
const A3: &str = "sip:alice@192.0.2.3:5060";

/// A server with the default settings (no auth, one shard).
fn server() -> ServerProcess {
    ServerProcess::start(&["--shards", "1"])
}

/// A server with a `[registrar]` section.
fn server_with_registrar(section: &str) -> ServerProcess {
    let cfg = config_file(&format!("[registrar]\n{section}\n"));
    ServerProcess::start(&["--shards", "1", "--config", &cfg])
}

/// The bindings of `aor` as a REGISTER without Contact lists them.
fn query(c: &Client, s: &ServerProcess, aor: &str) -> Vec<ContactInfo> {
    let r = Register::new(aor).send(c, s.addr);
    assert_status(&r, 200);
    contacts(&r)
}

#[test]
fn add_binding_is_listed_with_expires() {
    let s = server();
    let c = Client::new();
    let r = Register::new(ALICE)
        .contact(&format!("<{A1}>;expires=600"))
        .send(&c, s.addr);
    assert_status(&r, 200);
    let list = contacts(&r);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].uri, A1);
    assert!((599..=600).contains(&list[0].expires()), "{list:?}");
    // It is stored: a later query lists it too.
    let list = query(&c, &s, ALICE);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].uri, A1);
}

#[test]
fn refresh_keeps_one_binding_with_the_new_expiry() {
    let s = server();
    let c = Client::new();
    let reg = Register::new(ALICE).contact(&format!("<{A1}>;expires=600"));
    assert_status(&reg.send(&c, s.addr), 200);
    let refresh = reg
        .next()
        .no_contacts()
        .contact(&format!("<{A1}>;expires=300"));
    let r = refresh.send(&c, s.addr);
    assert_status(&r, 200);
    let list = contacts(&r);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].uri, A1);
    assert!((299..=300).contains(&list[0].expires()), "{list:?}");
}

#[test]
fn expires_param_zero_removes_that_binding() {
    let s = server();
    let c = Client::new();
    let reg = Register::new(ALICE)
        .contact(&format!("<{A1}>"))
        .contact(&format!("<{A2}>"));
    assert_status(&reg.send(&c, s.addr), 200);
    let r = reg
        .next()
        .no_contacts()
        .contact(&format!("<{A1}>;expires=0"))
        .send(&c, s.addr);
    assert_status(&r, 200);
    assert_eq!(contact_uris(&r), vec![A2.to_string()]);
    let list = query(&c, &s, ALICE);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].uri, A2);
}

#[test]
fn expires_header_zero_removes_that_binding() {
    let s = server();
    let c = Client::new();
    let reg = Register::new(ALICE)
        .contact(&format!("<{A1}>"))
        .contact(&format!("<{A2}>"));
    assert_status(&reg.send(&c, s.addr), 200);
    let r = reg
        .next()
        .no_contacts()
        .contact(&format!("<{A2}>"))
        .expires(0)
        .send(&c, s.addr);
    assert_status(&r, 200);
    assert_eq!(contact_uris(&r), vec![A1.to_string()]);
    assert_eq!(query(&c, &s, ALICE).len(), 1);
}

#[test]
fn contact_expires_param_wins_over_expires_header() {
    let s = server();
    let c = Client::new();
    let r = Register::new(ALICE)
        .contact(&format!("<{A1}>;expires=120"))
        .contact(&format!("<{A2}>"))
        .expires(900)
        .send(&c, s.addr);
    assert_status(&r, 200);
    let list = contacts(&r);
    let exp = |uri: &str| list.iter().find(|b| b.uri == uri).unwrap().expires();
    assert!((119..=120).contains(&exp(A1)), "{list:?}");
    assert!((899..=900).contains(&exp(A2)), "{list:?}");
}

#[test]
fn default_expiry_is_3600_without_param_or_header() {
    let s = server();
    let c = Client::new();
    let r = Register::new(ALICE)
        .contact(&format!("<{A1}>"))
        .send(&c, s.addr);
    assert_status(&r, 200);
    let list = contacts(&r);
    assert_eq!(list.len(), 1);
    assert!((3599..=3600).contains(&list[0].expires()), "{list:?}");
}

#[test]
fn expiry_below_minimum_gets_423_with_min_expires() {
    let s = server_with_registrar("min_expires = 120");
    let c = Client::new();
    let r = Register::new(ALICE)
        .contact(&format!("<{A1}>;expires=30"))
        .send(&c, s.addr);
    assert_status(&r, 423);
    assert_eq!(header_value(&r, "Min-Expires").as_deref(), Some("120"));
    // The same through the Expires header.
    let r = Register::new(ALICE)
        .contact(&format!("<{A1}>"))
        .expires(119)
        .send(&c, s.addr);
    assert_status(&r, 423);
    assert_eq!(header_value(&r, "Min-Expires").as_deref(), Some("120"));
    assert!(query(&c, &s, ALICE).is_empty());
    // The minimum itself is accepted.
    let r = Register::new(ALICE)
        .contact(&format!("<{A1}>"))
        .expires(120)
        .send(&c, s.addr);
    assert_status(&r, 200);
}

#[test]
fn expiry_above_maximum_is_clamped() {
    let s = server_with_registrar("max_expires = 1000\ndefault_expires = 600");
    let c = Client::new();
    let r = Register::new(ALICE)
        .contact(&format!("<{A1}>;expires=100000"))
        .send(&c, s.addr);
    assert_status(&r, 200);
    let list = contacts(&r);
    assert_eq!(list.len(), 1);
    assert!((999..=1000).contains(&list[0].expires()), "{list:?}");
}

#[test]
fn star_with_expires_zero_removes_all_bindings() {
    let s = server();
    let c = Client::new();
    let reg = Register::new(ALICE)
        .contact(&format!("<{A1}>"))
        .contact(&format!("<{A2}>"));
    assert_status(&reg.send(&c, s.addr), 200);
    let r = reg
        .next()
        .no_contacts()
        .contact("*")
        .expires(0)
        .send(&c, s.addr);
    assert_status(&r, 200);
    assert!(contacts(&r).is_empty(), "{}", String::from_utf8_lossy(&r));
    assert!(query(&c, &s, ALICE).is_empty());
}

#[test]
fn star_with_other_contacts_gets_400() {
    let s = server();
    let c = Client::new();
    let reg = Register::new(ALICE).contact(&format!("<{A1}>"));
    assert_status(&reg.send(&c, s.addr), 200);
    let r = reg
        .next()
        .no_contacts()
        .contact("*")
        .contact(&format!("<{A2}>"))
        .expires(0)
        .send(&c, s.addr);
    assert_status(&r, 400);
    // `*` in a list on one header line.
    let r = reg
        .next()
        .next()
        .no_contacts()
        .contact(&format!("*, <{A2}>"))
        .expires(0)
        .send(&c, s.addr);
    assert_status(&r, 400);
    // Nothing removed.
    assert_eq!(query(&c, &s, ALICE).len(), 1);
}

#[test]
fn star_with_non_zero_or_missing_expires_gets_400() {
    let s = server();
    let c = Client::new();
    let reg = Register::new(ALICE).contact(&format!("<{A1}>"));
    assert_status(&reg.send(&c, s.addr), 200);
    let star = reg.next().no_contacts().contact("*");
    assert_status(&star.clone().expires(60).send(&c, s.addr), 400);
    assert_status(&star.next().send(&c, s.addr), 400);
    assert_eq!(query(&c, &s, ALICE).len(), 1);
}

#[test]
fn register_without_contact_lists_bindings_and_changes_nothing() {
    let s = server();
    let c = Client::new();
    let reg = Register::new(ALICE)
        .contact(&format!("<{A1}>;expires=600"))
        .contact(&format!("<{A2}>;expires=900"));
    assert_status(&reg.send(&c, s.addr), 200);
    // A query from another client and Call-ID.
    let other = Client::new();
    let r = Register::new(ALICE).send(&other, s.addr);
    assert_status(&r, 200);
    assert_eq!(contact_uris(&r), vec![A1.to_string(), A2.to_string()]);
    // A query on the same Call-ID with a higher CSeq also changes nothing.
    let r = reg.next().no_contacts().send(&c, s.addr);
    assert_status(&r, 200);
    let list = contacts(&r);
    assert_eq!(list.len(), 2);
    let exp = |uri: &str| list.iter().find(|b| b.uri == uri).unwrap().expires();
    assert!((599..=600).contains(&exp(A1)), "{list:?}");
    assert!((899..=900).contains(&exp(A2)), "{list:?}");
    // An AOR without bindings: 200 with no Contact.
    let r = Register::new("sip:nobody@localhost").send(&c, s.addr);
    assert_status(&r, 200);
    assert!(contacts(&r).is_empty());
}

#[test]
fn older_cseq_on_same_call_id_gets_500_and_does_not_overwrite() {
    let s = server();
    let c = Client::new();
    let reg = Register::new(ALICE)
        .cseq(5)
        .contact(&format!("<{A1}>;expires=600"));
    assert_status(&reg.send(&c, s.addr), 200);
    let older = reg
        .clone()
        .cseq(4)
        .no_contacts()
        .contact(&format!("<{A1}>;expires=300"));
    assert_status(&older.send(&c, s.addr), 500);
    // The same CSeq with another branch is not a retransmission either.
    let same = reg
        .clone()
        .no_contacts()
        .contact(&format!("<{A1}>;expires=300"));
    assert_status(&same.send(&c, s.addr), 500);
    let list = query(&c, &s, ALICE);
    assert_eq!(list.len(), 1);
    assert!((599..=600).contains(&list[0].expires()), "{list:?}");
}

#[test]
fn retransmission_gets_200_again_and_changes_nothing() {
    let s = server();
    let c = Client::new();
    let bytes = Register::new(ALICE)
        .contact(&format!("<{A1}>;expires=600"))
        .build(&c);
    let first = c.request(&bytes, s.addr);
    assert_status(&first, 200);
    // Long enough for a re-applied request to show a fresh 600 s instead of at most 599.
    std::thread::sleep(Duration::from_millis(1100));
    let again = c.request(&bytes, s.addr);
    assert_status(&again, 200);
    let list = contacts(&again);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].uri, A1);
    assert!(list[0].expires() <= 599, "re-applied: {list:?}");
}

#[test]
fn q_values_are_stored_and_reported() {
    let s = server();
    let c = Client::new();
    let r = Register::new(ALICE)
        .contact(&format!("<{A1}>;q=0.5"))
        .contact(&format!("<{A2}>;q=0.25"))
        .contact(&format!("<{A3}>"))
        .send(&c, s.addr);
    assert_status(&r, 200);
    let list = query(&c, &s, ALICE);
    assert_eq!(list.len(), 3, "{list:?}");
    let q = |uri: &str| {
        list.iter()
            .find(|b| b.uri == uri)
            .unwrap()
            .param("q")
            .map(str::to_string)
    };
    assert_eq!(q(A1).as_deref(), Some("0.5"));
    assert_eq!(q(A2).as_deref(), Some("0.25"));
    // No q given: the default (1) is not written.
    assert_eq!(q(A3), None);
}

#[test]
fn contacts_beyond_the_per_aor_limit_get_503() {
    let s = server_with_registrar("max_contacts = 2");
    let c = Client::new();
    let reg = Register::new(ALICE)
        .contact(&format!("<{A1}>"))
        .contact(&format!("<{A2}>"));
    assert_status(&reg.send(&c, s.addr), 200);
    let third = reg.next().no_contacts().contact(&format!("<{A3}>"));
    assert_status(&third.send(&c, s.addr), 503);
    assert_eq!(
        contact_uris(&Register::new(ALICE).send(&c, s.addr)),
        vec![A1.to_string(), A2.to_string()]
    );
    // Refreshing an existing binding at the limit is fine.
    let refresh = third.next().no_contacts().contact(&format!("<{A1}>"));
    assert_status(&refresh.send(&c, s.addr), 200);
    // So is replacing one: a removal and an addition in one request.
    let swap = refresh
        .next()
        .no_contacts()
        .contact(&format!("<{A1}>;expires=0"))
        .contact(&format!("<{A3}>"));
    let r = swap.send(&c, s.addr);
    assert_status(&r, 200);
    assert_eq!(contact_uris(&r), vec![A2.to_string(), A3.to_string()]);
    // Three at once for a fresh AOR is refused too.
    let r = Register::new("sip:bob@localhost")
        .contact("<sip:bob@192.0.2.1>")
        .contact("<sip:bob@192.0.2.2>")
        .contact("<sip:bob@192.0.2.3>")
        .send(&c, s.addr);
    assert_status(&r, 503);
    assert!(query(&c, &s, "sip:bob@localhost").is_empty());
}

#[test]
fn path_is_echoed_in_order() {
    let s = server();
    let c = Client::new();
    let r = Register::new(ALICE)
        .contact(&format!("<{A1}>"))
        .header("Path: <sip:p1.example.net;lr>")
        .header("Path: <sip:p2.example.net;lr>, <sip:p3.example.net;lr>")
        .header("Supported: path")
        .send(&c, s.addr);
    assert_status(&r, 200);
    assert_eq!(
        header_values(&r, "Path"),
        vec![
            "<sip:p1.example.net;lr>".to_string(),
            "<sip:p2.example.net;lr>, <sip:p3.example.net;lr>".to_string()
        ]
    );
    assert_eq!(contact_uris(&r), vec![A1.to_string()]);
    // Require: path is supported.
    let r = Register::new("sip:bob@localhost")
        .contact("<sip:bob@192.0.2.9>")
        .header("Path: <sip:p1.example.net;lr>")
        .header("Require: path")
        .send(&c, s.addr);
    assert_status(&r, 200);
    assert_eq!(header_values(&r, "Path").len(), 1);
}

#[test]
fn same_instance_and_reg_id_replaces_the_binding() {
    let s = server();
    let c = Client::new();
    let inst = "\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\"";
    let reg = Register::new(ALICE).contact(&format!("<{A1}>;+sip.instance={inst};reg-id=1"));
    let r = reg.send(&c, s.addr);
    assert_status(&r, 200);
    let list = contacts(&r);
    assert_eq!(list.len(), 1);
    assert_eq!(
        list[0].param("+sip.instance"),
        Some("<urn:uuid:00000000-0000-1000-8000-000A95A0E128>")
    );
    assert_eq!(list[0].param("reg-id"), Some("1"));
    // Another contact URI (the UA got a new address), same instance and reg-id.
    let r = reg
        .next()
        .no_contacts()
        .contact(&format!("<{A2}>;+sip.instance={inst};reg-id=1"))
        .send(&c, s.addr);
    assert_status(&r, 200);
    assert_eq!(contact_uris(&r), vec![A2.to_string()]);
    // Another reg-id is another flow: a second binding.
    let r = reg
        .next()
        .next()
        .no_contacts()
        .contact(&format!("<{A3}>;+sip.instance={inst};reg-id=2"))
        .send(&c, s.addr);
    assert_status(&r, 200);
    assert_eq!(contact_uris(&r), vec![A2.to_string(), A3.to_string()]);
}

#[test]
fn bindings_expire_by_the_timer() {
    let cfg = config_file("[registrar]\nmin_expires = 1\n");
    let s = ServerProcess::start_with(&["--shards", "1", "--config", &cfg], true);
    let c = Client::new();
    let r = Register::new(ALICE)
        .contact(&format!("<{A1}>;expires=1"))
        .contact(&format!("<{A2}>;expires=2"))
        .send(&c, s.addr);
    assert_status(&r, 200);
    assert_eq!(contacts(&r).len(), 2);
    assert_eq!(s.metric("sipshard_bindings"), Some(2.0));
    std::thread::sleep(Duration::from_millis(3200));
    // The timer (not the next REGISTER) removed them: look at the gauge first.
    assert_eq!(s.metric("sipshard_bindings"), Some(0.0));
    assert!(query(&c, &s, ALICE).is_empty());
}

#[test]
fn a_refreshed_binding_outlives_its_first_expiry() {
    let cfg = config_file("[registrar]\nmin_expires = 1\n");
    let s = ServerProcess::start_with(&["--shards", "1", "--config", &cfg], true);
    let c = Client::new();
    let reg = Register::new(ALICE).contact(&format!("<{A1}>;expires=1"));
    assert_status(&reg.send(&c, s.addr), 200);
    let refresh = reg
        .next()
        .no_contacts()
        .contact(&format!("<{A1}>;expires=60"));
    assert_status(&refresh.send(&c, s.addr), 200);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(s.metric("sipshard_bindings"), Some(1.0));
    let list = query(&c, &s, ALICE);
    assert_eq!(list.len(), 1, "{list:?}");
    assert!(list[0].expires() > 50, "{list:?}");
}

#[test]
fn the_timer_of_a_removed_aor_spares_the_next_one() {
    let cfg = config_file("[registrar]\nmin_expires = 1\n");
    let s = ServerProcess::start_with(&["--shards", "1", "--config", &cfg], true);
    let c = Client::new();
    let reg = Register::new(ALICE).contact(&format!("<{A1}>;expires=1"));
    assert_status(&reg.send(&c, s.addr), 200);
    let remove = reg.next().no_contacts().contact("*").expires(0);
    assert_status(&remove.send(&c, s.addr), 200);
    // Another AOR, likely in the freed record.
    let bob = Register::new("sip:bob@localhost").contact("<sip:bob@192.0.2.7>;expires=60");
    assert_status(&bob.send(&c, s.addr), 200);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(s.metric("sipshard_bindings"), Some(1.0));
    assert_eq!(query(&c, &s, "sip:bob@localhost").len(), 1);
    assert!(query(&c, &s, ALICE).is_empty());
}

#[test]
fn request_uri_of_another_domain_gets_403() {
    let s = server();
    let c = Client::new();
    let r = Register::new(ALICE)
        .ruri("sip:example.org")
        .contact(&format!("<{A1}>"))
        .send(&c, s.addr);
    assert_status(&r, 403);
    assert!(query(&c, &s, ALICE).is_empty());
}

#[test]
fn to_of_another_domain_gets_403() {
    let s = server();
    let c = Client::new();
    let r = Register::new("sip:alice@example.org")
        .ruri("sip:localhost")
        .contact(&format!("<{A1}>"))
        .send(&c, s.addr);
    assert_status(&r, 403);
}

#[test]
fn non_sip_to_uri_gets_400() {
    let s = server();
    let c = Client::new();
    let r = Register::new(ALICE)
        .to("tel:+15551234567")
        .contact(&format!("<{A1}>"))
        .send(&c, s.addr);
    assert_status(&r, 400);
}

fn one_aor_under_both_spellings(shards: &str) {
    let s = ServerProcess::start(&["--shards", shards]);
    let c = Client::new();
    let r = Register::new("sip:alice@127.0.0.1")
        .contact(&format!("<{A1}>"))
        .send(&c, s.addr);
    assert_status(&r, 200);
    let r = Register::new("sip:alice@localhost")
        .contact(&format!("<{A2}>"))
        .send(&c, s.addr);
    assert_status(&r, 200);
    assert_eq!(contact_uris(&r), vec![A1.to_string(), A2.to_string()]);
    let r = Register::new("sip:alice@127.0.0.1").send(&c, s.addr);
    assert_eq!(contact_uris(&r), vec![A1.to_string(), A2.to_string()]);
}

#[test]
fn domain_aliases_are_one_aor() {
    one_aor_under_both_spellings("1");
}

#[test]
fn domain_aliases_are_one_aor_across_shards() {
    one_aor_under_both_spellings("2");
}

#[test]
fn many_aors_over_two_shards_are_handed_off_and_all_listed() {
    // Kernel steering off: one client socket, so without hand-offs one shard would get all.
    let s = ServerProcess::start_with(&["--shards", "2", "--steering", "off"], true);
    let c = Client::new();
    let n = 40;
    for i in 0..n {
        let r = Register::new(&format!("sip:user{i}@localhost"))
            .contact(&format!("<sip:user{i}@192.0.2.1:5060>"))
            .send(&c, s.addr);
        assert_status(&r, 200);
        assert_eq!(contacts(&r).len(), 1, "user{i}");
    }
    for i in 0..n {
        let list = query(&c, &s, &format!("sip:user{i}@localhost"));
        assert_eq!(list.len(), 1, "user{i}");
        assert_eq!(list[0].uri, format!("sip:user{i}@192.0.2.1:5060"));
    }
    assert_eq!(s.metric("sipshard_bindings"), Some(n as f64));
    let handoffs = s.metric("sipshard_handoffs_total").unwrap();
    assert!(handoffs > 0.0, "{handoffs}");
    // The stage histograms (published within 50 ms): every hand-over waited in its owner's
    // queue once, and every datagram went through a core once where it arrived and once
    // more where it was handed.
    std::thread::sleep(Duration::from_millis(150));
    let samples = |stage: &str| {
        s.metric(&format!(
            "sipshard_stage_us_samples_total{{stage=\"{stage}\"}}"
        ))
        .unwrap_or(-1.0)
    };
    assert_eq!(samples("handoff_queue"), handoffs);
    let datagrams: f64 = s
        .metrics_text()
        .lines()
        .filter(|l| l.starts_with("sipshard_datagrams_received_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(samples("core"), datagrams + handoffs);
    assert!(samples("send") >= 2.0 * n as f64, "{}", samples("send"));
    assert!(samples("socket_wait") >= 2.0 * n as f64);
    assert!(
        s.metric("sipshard_stage_us_quantile{stage=\"core\",quantile=\"0.5\"}")
            .unwrap()
            >= 1.0
    );
}

fn request_to_user(method: &str, ruri: &str, c: &Client) -> String {
    format!(
        "{method} {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {a};branch={b};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:carol@localhost>;tag=c1\r\n\
         To: <{ruri}>\r\n\
         Call-ID: {cid}\r\n\
         CSeq: 1 {method}\r\n\
         Contact: <sip:carol@{a}>\r\n\
         Content-Length: 0\r\n\r\n",
        a = c.addr,
        b = unique("z9hG4bK-"),
        cid = unique("call-"),
    )
}

fn redirect_with_shards(shards: &str) {
    let s = ServerProcess::start(&["--shards", shards, "--mode", "redirect"]);
    let c = Client::new();
    let r = Register::new(ALICE)
        .contact(&format!("<{A1}>;q=0.5"))
        .contact(&format!("<{A2}>"))
        .send(&c, s.addr);
    assert_status(&r, 200);
    let r = c.request(&request_to_user("INVITE", ALICE, &c), s.addr);
    assert_status(&r, 302);
    let list = contacts(&r);
    assert_eq!(contact_uris(&r), vec![A1.to_string(), A2.to_string()]);
    let a1 = list.iter().find(|b| b.uri == A1).unwrap();
    assert_eq!(a1.param("q"), Some("0.5"));
    // The same user under our other host name.
    let r = c.request(
        &request_to_user("INVITE", "sip:alice@127.0.0.1", &c),
        s.addr,
    );
    assert_status(&r, 302);
    assert_eq!(contact_uris(&r), vec![A1.to_string(), A2.to_string()]);
}

#[test]
fn redirect_mode_invite_gets_302_with_the_contacts() {
    redirect_with_shards("1");
}

#[test]
fn redirect_mode_works_across_shards() {
    redirect_with_shards("2");
    // Enough users that both shards own some.
    let s = ServerProcess::start_with(
        &["--shards", "2", "--mode", "redirect", "--steering", "off"],
        true,
    );
    let c = Client::new();
    for i in 0..8 {
        let r = Register::new(&format!("sip:user{i}@localhost"))
            .contact(&format!("<sip:user{i}@192.0.2.1>"))
            .send(&c, s.addr);
        assert_status(&r, 200);
    }
    for i in 0..8 {
        let r = c.request(
            &request_to_user("INVITE", &format!("sip:user{i}@localhost"), &c),
            s.addr,
        );
        assert_status(&r, 302);
        assert_eq!(contact_uris(&r), vec![format!("sip:user{i}@192.0.2.1")]);
    }
    assert!(s.metric("sipshard_handoffs_total").unwrap() > 0.0);
}

#[test]
fn redirect_mode_user_without_binding_gets_480() {
    let s = ServerProcess::start(&["--shards", "1", "--mode", "redirect"]);
    let c = Client::new();
    let r = c.request(
        &request_to_user("INVITE", "sip:nobody@localhost", &c),
        s.addr,
    );
    assert_status(&r, 480);
    // A binding that was removed is gone for routing too.
    let reg = Register::new(ALICE).contact(&format!("<{A1}>"));
    assert_status(&reg.send(&c, s.addr), 200);
    let r = reg
        .next()
        .no_contacts()
        .contact("*")
        .expires(0)
        .send(&c, s.addr);
    assert_status(&r, 200);
    let r = c.request(&request_to_user("INVITE", ALICE, &c), s.addr);
    assert_status(&r, 480);
}

#[test]
fn proxy_mode_forwards_options_to_a_registered_user() {
    let s = server();
    let c = Client::new();
    let phone = Client::new();
    let contact = format!("sip:alice@{}", phone.addr);
    let r = Register::new(ALICE)
        .contact(&format!("<{contact}>"))
        .send(&c, s.addr);
    assert_status(&r, 200);
    c.send(&request_to_user("OPTIONS", ALICE, &c), s.addr);
    // The phone gets the request with the Request-URI rewritten to its contact, our Via on
    // top, Max-Forwards decremented and no Record-Route (OPTIONS creates no dialog).
    let fwd = phone
        .recv_timeout(std::time::Duration::from_secs(3))
        .expect("forwarded OPTIONS");
    let m = sipshard::sip::Message::parse(&fwd).unwrap();
    assert_eq!(m.request_uri_bytes(), Some(contact.as_bytes()));
    assert_eq!(m.vias().count(), 2);
    assert_eq!(m.max_forwards().unwrap(), Some(69));
    assert!(m.header(sipshard::sip::HeaderName::RecordRoute).is_none());
    // The phone answers; the caller gets the 200 with the proxy's Via removed.
    let mut resp = Vec::new();
    sipshard::sip::write::response_head(&mut resp, &m, 200, b"OK", Some(b"ph"), None);
    sipshard::sip::write::finish(&mut resp, b"");
    phone.send_bytes(&resp, s.addr);
    let r = c
        .recv_timeout(std::time::Duration::from_secs(3))
        .expect("relayed 200");
    let m = sipshard::sip::Message::parse(&r).unwrap();
    assert_eq!(m.status(), Some(200));
    assert_eq!(m.vias().count(), 1);
    assert_eq!(m.to().unwrap().tag(), Some(&b"ph"[..]));
}
