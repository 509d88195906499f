use super::*;

fn req(via: &str, contact: &str) -> Vec<u8> {
    format!(
        "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bK1;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a\r\nTo: <sip:bob@example.com>\r\n\
         Call-ID: c1\r\nCSeq: 1 INVITE\r\nContact: {contact}\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn private_ranges() {
    for ip in [
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "100.64.0.1",
        "100.127.255.254",
        "169.254.1.1",
        "fd00::1",
        "fe80::1",
    ] {
        assert!(is_private(ip.parse().unwrap()), "{ip}");
    }
    for ip in [
        "8.8.8.8",
        "172.32.0.1",
        "100.128.0.1",
        "127.0.0.1",
        "203.0.113.5",
        "2001:db8::1",
    ] {
        assert!(!is_private(ip.parse().unwrap()), "{ip}");
    }
}

#[test]
fn detection_as_nat_uac_test() {
    let public = addr("203.0.113.5:5060");
    // Via and Contact match the source: not NAT.
    let m = req("203.0.113.5:5060", "<sip:alice@203.0.113.5:5060>");
    assert!(!behind_nat(&Message::parse(&m).unwrap(), public));
    // The port differs (a NAT kept the address, changed the port).
    let m = req("203.0.113.5:5060", "<sip:alice@203.0.113.5:5060>");
    assert!(behind_nat(
        &Message::parse(&m).unwrap(),
        addr("203.0.113.5:40000")
    ));
    // Only the port differs, and the Contact is another port (a third-party registration, or
    // sipsak listening apart from where it sends): reached at the Contact.
    let m = req("203.0.113.5:5060", "<sip:alice@203.0.113.5:33333>");
    assert!(!behind_nat(
        &Message::parse(&m).unwrap(),
        addr("203.0.113.5:40000")
    ));
    // The address differs; the default port 5060 counts as written.
    let m = req("192.168.1.20", "<sip:alice@192.168.1.20>");
    assert!(behind_nat(&Message::parse(&m).unwrap(), public));
    let m = req("203.0.113.5", "<sip:alice@203.0.113.5>");
    assert!(!behind_nat(&Message::parse(&m).unwrap(), public));
    // A host name in the Via is not the source address.
    let m = req("pc33.example.com:5060", "<sip:alice@203.0.113.5>");
    assert!(behind_nat(&Message::parse(&m).unwrap(), public));
    // Via matches (an ALG rewrote it), the Contact is private: NAT.
    let m = req("203.0.113.5:5060", "<sip:alice@10.0.0.7:5060>");
    assert!(behind_nat(&Message::parse(&m).unwrap(), public));
    // A phone on a private network talking to a server on it: reached at its Contact.
    let lan = addr("10.0.0.7:5060");
    let m = req("10.0.0.7:5060", "<sip:alice@10.0.0.8:5060>");
    assert!(!behind_nat(&Message::parse(&m).unwrap(), lan));
    // A third-party registration: Via is the source, the Contact another public host.
    let m = req("203.0.113.5:5060", "<sip:alice@198.51.100.9:5070>");
    assert!(!behind_nat(&Message::parse(&m).unwrap(), public));
    // IPv6 sent-by with brackets.
    let m = req("[2001:db8::5]:5062", "<sip:alice@[2001:db8::5]:5062>");
    assert!(!behind_nat(
        &Message::parse(&m).unwrap(),
        addr("[2001:db8::5]:5062")
    ));
}

#[test]
fn contact_fixing_rewrites_host_and_port_only() {
    let src = addr("203.0.113.5:40123");
    for (contact, want) in [
        (
            "<sip:alice@192.168.1.20:5062;transport=udp>;expires=60",
            "<sip:alice@203.0.113.5:40123;transport=udp>;expires=60",
        ),
        ("<sip:alice@192.168.1.20>", "<sip:alice@203.0.113.5:40123>"),
        (
            "\"Alice\" <sip:alice@[fd00::20]:5062>;+sip.instance=\"<urn:x>\"",
            "\"Alice\" <sip:alice@203.0.113.5:40123>;+sip.instance=\"<urn:x>\"",
        ),
        (
            "sip:alice@10.0.0.1:5060;ob",
            "sip:alice@203.0.113.5:40123;ob",
        ),
        ("<sip:phone.local>", "<sip:203.0.113.5:40123>"),
    ] {
        let m = req("192.168.1.20:5062", contact);
        let msg = Message::parse(&m).unwrap();
        let mut out = Vec::new();
        assert!(write_fixed_contact(&mut out, &msg, src), "{contact}");
        let fixed = Message::parse(&out).unwrap();
        assert_eq!(
            fixed.header(HeaderName::Contact),
            Some(want.as_bytes()),
            "{contact}"
        );
        // Nothing else changed.
        let text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(
            text.replace(want, contact),
            String::from_utf8(m).unwrap(),
            "{contact}"
        );
    }
    // Already the source, or no Contact: nothing written.
    let m = req("192.168.1.20:5062", "<sip:alice@203.0.113.5:40123>");
    let mut out = Vec::new();
    assert!(!write_fixed_contact(
        &mut out,
        &Message::parse(&m).unwrap(),
        src
    ));
    let m = String::from_utf8(req("h", "<sip:x@h>"))
        .unwrap()
        .replace("Contact: <sip:x@h>\r\n", "");
    assert!(!write_fixed_contact(
        &mut out,
        &Message::parse(m.as_bytes()).unwrap(),
        src
    ));
    assert!(out.is_empty());
}

#[test]
fn flow_tokens_round_trip() {
    for a in ["127.0.0.1:40123", "[2001:db8::1]:5060"] {
        let mut v = b"sip:127.0.0.1:5060;lr;ft=".to_vec();
        push_hostport(&mut v, addr(a));
        let uri = Uri::parse(&v).unwrap();
        assert_eq!(flow_token(&uri), Some((crate::sip::Proto::Udp, addr(a))));
    }
    let uri = Uri::parse(
        b"sip:127.0.0.1:5060;transport=tcp;lr;ft=tcp:192.0.2.9:40000;fc=tcp:192.0.2.8:1",
    )
    .unwrap();
    assert_eq!(
        flow_token(&uri),
        Some((crate::sip::Proto::Tcp, addr("192.0.2.9:40000")))
    );
    assert_eq!(
        caller_flow_token(&uri),
        Some((crate::sip::Proto::Tcp, addr("192.0.2.8:1")))
    );
    let uri = Uri::parse(b"sip:127.0.0.1:5060;lr;ft=nonsense").unwrap();
    assert_eq!(flow_token(&uri), None);
    let uri = Uri::parse(b"sip:127.0.0.1:5060;lr").unwrap();
    assert_eq!(flow_token(&uri), None);
}
