//! STUN binding requests on the SIP port (RFC 5626 §4.4.2 keepalives, RFC 8489 §6): phones
//! behind NAT send them to learn their public address and keep the NAT binding open. A SIP
//! message never starts with byte 0 or 1, so one look at the first bytes tells them apart.
//! The answer is a Binding success response with XOR-MAPPED-ADDRESS (RFC 8489 §14.2).

use std::net::{IpAddr, SocketAddr};

/// The magic cookie every RFC 5389/8489 message carries at offset 4.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
const HEADER_LEN: usize = 20;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const XOR_MAPPED_ADDRESS: u16 = 0x0020;

/// True if `data` looks like a STUN message (first two bits zero, the magic cookie, a length
/// that is a multiple of 4 and matches the datagram).
pub fn is_stun(data: &[u8]) -> bool {
    data.len() >= HEADER_LEN && data[0] & 0xc0 == 0 && data[4..8] == MAGIC_COOKIE.to_be_bytes() && {
        let len = u16::from_be_bytes([data[2], data[3]]) as usize;
        len.is_multiple_of(4) && HEADER_LEN + len == data.len()
    }
}

/// Appends the answer to a STUN Binding request from `src` to `out`. Returns false (nothing
/// written) for any other STUN message (responses, indications, other methods: ignored).
pub fn answer(data: &[u8], src: SocketAddr, out: &mut Vec<u8>) -> bool {
    if !is_stun(data) || u16::from_be_bytes([data[0], data[1]]) != BINDING_REQUEST {
        return false;
    }
    let transaction = &data[8..20];
    let (family, addr_len): (u8, u16) = match src.ip() {
        IpAddr::V4(_) => (1, 4),
        IpAddr::V6(_) => (2, 16),
    };
    let attr_len = 4 + addr_len;
    out.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
    out.extend_from_slice(&(4 + attr_len).to_be_bytes());
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(transaction);
    out.extend_from_slice(&XOR_MAPPED_ADDRESS.to_be_bytes());
    out.extend_from_slice(&attr_len.to_be_bytes());
    out.push(0);
    out.push(family);
    out.extend_from_slice(&(src.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes());
    let cookie = MAGIC_COOKIE.to_be_bytes();
    match src.ip() {
        IpAddr::V4(v4) => {
            for (i, b) in v4.octets().iter().enumerate() {
                out.push(b ^ cookie[i]);
            }
        }
        IpAddr::V6(v6) => {
            // XORed with the cookie followed by the transaction id.
            for (i, b) in v6.octets().iter().enumerate() {
                let k = if i < 4 { cookie[i] } else { transaction[i - 4] };
                out.push(b ^ k);
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(tid: [u8; 12]) -> Vec<u8> {
        let mut r = vec![0, 1, 0, 0];
        r.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        r.extend_from_slice(&tid);
        r
    }

    /// Decodes XOR-MAPPED-ADDRESS from a response (the inverse of `answer`, written apart).
    fn mapped(resp: &[u8]) -> SocketAddr {
        assert_eq!(&resp[0..2], &[1, 1], "Binding success response");
        assert_eq!(
            u16::from_be_bytes([resp[2], resp[3]]) as usize,
            resp.len() - 20
        );
        assert_eq!(&resp[20..22], &[0, 0x20], "XOR-MAPPED-ADDRESS");
        let port = u16::from_be_bytes([resp[26], resp[27]]) ^ 0x2112;
        let mut key = MAGIC_COOKIE.to_be_bytes().to_vec();
        key.extend_from_slice(&resp[8..20]);
        let addr: Vec<u8> = resp[28..].iter().zip(&key).map(|(a, k)| a ^ k).collect();
        let ip = match resp[25] {
            1 => IpAddr::from(<[u8; 4]>::try_from(&addr[..4]).unwrap()),
            2 => IpAddr::from(<[u8; 16]>::try_from(&addr[..16]).unwrap()),
            f => panic!("family {f}"),
        };
        SocketAddr::new(ip, port)
    }

    #[test]
    fn binding_requests_get_the_mapped_address_and_their_transaction_id() {
        for src in ["203.0.113.9:40123", "[2001:db8::7]:5060"] {
            let src: SocketAddr = src.parse().unwrap();
            let tid = *b"0123456789ab";
            let mut out = Vec::new();
            assert!(answer(&request(tid), src, &mut out));
            assert_eq!(&out[4..8], &MAGIC_COOKIE.to_be_bytes());
            assert_eq!(&out[8..20], &tid);
            assert_eq!(mapped(&out), src);
            assert!(is_stun(&out));
        }
    }

    #[test]
    fn other_datagrams_are_not_answered() {
        let src: SocketAddr = "203.0.113.9:40123".parse().unwrap();
        let mut out = Vec::new();
        assert!(!answer(b"OPTIONS sip:x SIP/2.0\r\n\r\n", src, &mut out));
        assert!(!answer(b"\r\n\r\n", src, &mut out));
        // A Binding response, a request without the cookie, a wrong length: ignored.
        let mut resp = request([1; 12]);
        resp[1] = 0x01;
        resp[0] = 0x01;
        assert!(!answer(&resp, src, &mut out));
        let mut old = request([1; 12]);
        old[4] = 0;
        assert!(!answer(&old, src, &mut out));
        let mut long = request([1; 12]);
        long.push(0);
        assert!(!answer(&long, src, &mut out));
        assert!(out.is_empty());
    }
}
