//! First look at a datagram from the shared socket, before any participant state: what
//! protocol it claims to be (RFC 7983 §7) and, for a STUN binding request, whose ICE
//! username fragment it names (RFC 8445 §7.2.2: USERNAME is `<receiver ufrag>:<sender ufrag>`).
//!
//! Nothing here trusts the bytes: every length is checked, nothing panics.

/// The protocol a datagram claims by its first byte (RFC 7983 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// 0..=3
    Stun,
    /// 20..=63
    Dtls,
    /// 128..=191 (RTP and RTCP share the range; str0m tells them apart).
    Rtp,
    /// Anything else (ZRTP, TURN channels, junk): never reaches str0m.
    Other,
}

/// Classifies a datagram by its first byte.
pub(crate) fn classify(datagram: &[u8]) -> Kind {
    match datagram.first() {
        Some(0..=3) => Kind::Stun,
        Some(20..=63) => Kind::Dtls,
        Some(128..=191) => Kind::Rtp,
        _ => Kind::Other,
    }
}

const STUN_HEADER_LEN: usize = 20;
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const ATTR_USERNAME: u16 = 0x0006;

/// A well-formed STUN header (RFC 8489 §5): type, length matching the datagram, cookie.
fn stun_type(datagram: &[u8]) -> Option<u16> {
    if datagram.len() < STUN_HEADER_LEN || datagram[4..8] != MAGIC_COOKIE {
        return None;
    }
    let ty = u16::from_be_bytes([datagram[0], datagram[1]]);
    let len = u16::from_be_bytes([datagram[2], datagram[3]]) as usize;
    if ty & 0xc000 != 0 || !len.is_multiple_of(4) || STUN_HEADER_LEN + len != datagram.len() {
        return None;
    }
    Some(ty)
}

/// The local (receiver) ufrag named by a STUN binding request, if the datagram is one.
pub(crate) fn binding_request_ufrag(datagram: &[u8]) -> Option<&str> {
    if stun_type(datagram)? != BINDING_REQUEST {
        return None;
    }
    let mut rest = &datagram[STUN_HEADER_LEN..];
    while rest.len() >= 4 {
        let ty = u16::from_be_bytes([rest[0], rest[1]]);
        let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        let value = rest.get(4..4 + len)?;
        if ty == ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            let (local, _remote) = username.split_once(':')?;
            return (!local.is_empty()).then_some(local);
        }
        // Attributes are padded to 4 bytes (RFC 8489 §14).
        let padded = (4 + len + 3) & !3;
        rest = rest.get(padded..)?;
    }
    None
}

/// Whether an outgoing datagram is a STUN binding success response. str0m only answers
/// requests whose MESSAGE-INTEGRITY checked out, so such a response proves the pair.
pub(crate) fn is_binding_success(datagram: &[u8]) -> bool {
    stun_type(datagram) == Some(BINDING_SUCCESS)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a STUN message with the given type and attributes (value bytes, unpadded).
    pub(crate) fn stun(ty: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (t, v) in attrs {
            body.extend_from_slice(&t.to_be_bytes());
            body.extend_from_slice(&(v.len() as u16).to_be_bytes());
            body.extend_from_slice(v);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut m = Vec::new();
        m.extend_from_slice(&ty.to_be_bytes());
        m.extend_from_slice(&(body.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn first_byte_classifies_per_rfc7983() {
        assert_eq!(classify(&[0]), Kind::Stun);
        assert_eq!(classify(&[3]), Kind::Stun);
        assert_eq!(classify(&[16]), Kind::Other, "ZRTP is not ours");
        assert_eq!(classify(&[22]), Kind::Dtls);
        assert_eq!(
            classify(&[64]),
            Kind::Other,
            "TURN channel data is not ours"
        );
        assert_eq!(classify(&[0x80]), Kind::Rtp);
        assert_eq!(classify(&[0xbf]), Kind::Rtp);
        assert_eq!(classify(&[0xc0]), Kind::Other);
        assert_eq!(classify(&[]), Kind::Other);
    }

    #[test]
    fn binding_request_names_the_receiver_ufrag() {
        let m = stun(0x0001, &[(0x0024, &[1, 2, 3, 4]), (0x0006, b"abcd:xyz")]);
        assert_eq!(binding_request_ufrag(&m), Some("abcd"));
    }

    #[test]
    fn padded_username_attribute_is_found_after_odd_length_attribute() {
        let m = stun(0x0001, &[(0x8022, b"odd"), (0x0006, b"srv1:cli")]);
        assert_eq!(binding_request_ufrag(&m), Some("srv1"));
    }

    #[test]
    fn non_requests_and_broken_messages_name_no_ufrag() {
        let indication = stun(0x0011, &[(0x0006, b"abcd:xyz")]);
        assert_eq!(binding_request_ufrag(&indication), None);
        let no_colon = stun(0x0001, &[(0x0006, b"abcd")]);
        assert_eq!(binding_request_ufrag(&no_colon), None);
        let empty_local = stun(0x0001, &[(0x0006, b":xyz")]);
        assert_eq!(binding_request_ufrag(&empty_local), None);
        let mut bad_cookie = stun(0x0001, &[(0x0006, b"abcd:xyz")]);
        bad_cookie[4] ^= 1;
        assert_eq!(binding_request_ufrag(&bad_cookie), None);
        let mut truncated = stun(0x0001, &[(0x0006, b"abcd:xyz")]);
        truncated.pop();
        assert_eq!(binding_request_ufrag(&truncated), None);
        // Attribute length pointing past the end.
        let mut overlong = stun(0x0001, &[(0x0006, b"abcd:xyz")]);
        overlong[22] = 0xff;
        assert_eq!(binding_request_ufrag(&overlong), None);
    }

    #[test]
    fn binding_success_is_recognised_and_nothing_else() {
        assert!(is_binding_success(&stun(0x0101, &[])));
        assert!(!is_binding_success(&stun(0x0001, &[])));
        assert!(!is_binding_success(&stun(0x0111, &[])));
        assert!(!is_binding_success(&[0x01, 0x01]));
    }

    #[test]
    fn random_bytes_never_panic_the_parsers() {
        // Deterministic xorshift: this test must not depend on a seed to be meaningful,
        // it walks every length up to 300 with several contents each.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..300 {
            for _ in 0..20 {
                let mut buf: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                if len >= 20 {
                    // Make many of them look like STUN so the attribute walk runs.
                    buf[0] = 0;
                    buf[1] = 1;
                    buf[4..8].copy_from_slice(&MAGIC_COOKIE);
                    let l = (len - 20) as u16;
                    buf[2..4].copy_from_slice(&l.to_be_bytes());
                }
                let _ = classify(&buf);
                let _ = binding_request_ufrag(&buf);
                let _ = is_binding_success(&buf);
            }
        }
    }
}
