//! The server's identity binding carried in every MLS credential (docs/E2EE.md §2).
//!
//! A member's `BasicCredential` identity bytes are
//!
//! ```text
//! identity = u16be(len(B)) || B || sig          (sig: 64 bytes)
//! sig      = Ed25519(identity_key, "sealroom/mls-binding/v1" || 0x00 || B)
//! ```
//!
//! where `B` is the UTF-8 JSON of a [`Binding`]. The server [`issue`]s it; every client and the
//! delivery service [`verify`] it against the pinned server key, the meeting they are in and the
//! signature key of the leaf that carries it. The signature covers the exact bytes received: the
//! JSON is never re-serialised before checking.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Domain-separation label of the binding signature. The MLS signatures of the same key carry
/// the `"MLS 1.0 "` prefix instead, so the two uses cannot be confused.
pub const BINDING_LABEL: &[u8] = b"sealroom/mls-binding/v1";

/// The only binding version this code issues and accepts.
pub const BINDING_VERSION: u32 = 1;

/// Length of the Ed25519 signature that ends the identity bytes.
const SIG_LEN: usize = 64;

/// What the server vouches for: this leaf key belongs to this person, on this device, in this
/// meeting. Unknown JSON members are ignored so later versions can add fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// Binding format version, [`BINDING_VERSION`].
    pub v: u32,
    /// The server's id (its public origin).
    pub server_id: String,
    /// The meeting the leaf may join.
    pub meeting_id: String,
    /// The enrolled person.
    pub user_id: String,
    /// The person's login name.
    pub username: String,
    /// The person's display name.
    pub display_name: String,
    /// The enrolled device.
    pub device_id: String,
    /// The device's name as enrolled.
    pub device_name: String,
    /// `"passkey"` or `"software"` (kept as text so a verifier accepts kinds added later).
    pub device_kind: String,
    /// base64url (no padding) of the member's 32-byte MLS signature public key.
    pub signature_key: String,
    /// Unix seconds at issue.
    pub issued_at: u64,
}

impl Binding {
    /// Encodes an MLS signature public key the way [`Binding::signature_key`] carries it.
    pub fn encode_signature_key(key: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(key)
    }
}

/// Why identity bytes do not verify. Every variant is the peer's (or the server's) fault except
/// [`CredentialError::TooLarge`], which only [`issue`] returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The identity bytes end before the length prefix, the JSON or the signature.
    #[error("identity bytes are truncated")]
    Truncated,
    /// Bytes follow the signature.
    #[error("identity bytes carry {0} bytes after the signature")]
    TrailingBytes(usize),
    /// The signature does not verify under the pinned server identity key.
    #[error("binding signature does not verify under the pinned server key")]
    BadSignature,
    /// The signed bytes are not a binding object.
    #[error("binding is not valid JSON of the expected shape: {0}")]
    Malformed(String),
    /// `v` is not [`BINDING_VERSION`].
    #[error("binding version {0} is not supported")]
    UnsupportedVersion(u32),
    /// The binding names another server.
    #[error("binding is for server {found:?}, expected {expected:?}")]
    WrongServer {
        /// The server id in the binding.
        found: String,
        /// The server id this client talks to.
        expected: String,
    },
    /// The binding names another meeting.
    #[error("binding is for meeting {found:?}, expected {expected:?}")]
    WrongMeeting {
        /// The meeting id in the binding.
        found: String,
        /// The meeting this client is in.
        expected: String,
    },
    /// The binding's `signature_key` is not the key of the leaf that carries it.
    #[error("binding is for another MLS signature key than the leaf's")]
    SignatureKeyMismatch,
    /// The credential is not a basic credential.
    #[error("credential is not a BasicCredential")]
    NotBasic,
    /// The binding JSON exceeds what the u16 length prefix can carry (caller error in [`issue`]).
    #[error("binding JSON of {0} bytes exceeds 65535")]
    TooLarge(usize),
}

fn signed_message(json: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(BINDING_LABEL.len() + 1 + json.len());
    m.extend_from_slice(BINDING_LABEL);
    m.push(0);
    m.extend_from_slice(json);
    m
}

/// Signs `binding` with the server identity key and returns the credential identity bytes.
pub fn issue(identity_key: &SigningKey, binding: &Binding) -> Result<Vec<u8>, CredentialError> {
    let json =
        serde_json::to_vec(binding).map_err(|e| CredentialError::Malformed(e.to_string()))?;
    let len = u16::try_from(json.len()).map_err(|_| CredentialError::TooLarge(json.len()))?;
    let sig = identity_key.sign(&signed_message(&json));
    let mut out = Vec::with_capacity(2 + json.len() + SIG_LEN);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&sig.to_bytes());
    Ok(out)
}

/// Verifies identity bytes (docs/E2EE.md §2): the signature under the pinned server key over the
/// exact JSON bytes, `v == 1`, the server and meeting ids, and that `signature_key` is
/// `leaf_signature_key`. Returns the binding only when all hold. Never panics on any input.
pub fn verify(
    identity: &[u8],
    pinned_identity_key: &VerifyingKey,
    expected_server_id: &str,
    expected_meeting_id: &str,
    leaf_signature_key: &[u8],
) -> Result<Binding, CredentialError> {
    let (len_bytes, rest) = identity
        .split_first_chunk::<2>()
        .ok_or(CredentialError::Truncated)?;
    let len = usize::from(u16::from_be_bytes(*len_bytes));
    if rest.len() < len + SIG_LEN {
        return Err(CredentialError::Truncated);
    }
    let (json, rest) = rest.split_at(len);
    let (sig, trailing) = rest.split_at(SIG_LEN);
    if !trailing.is_empty() {
        return Err(CredentialError::TrailingBytes(trailing.len()));
    }
    let sig = Signature::from_slice(sig).map_err(|_| CredentialError::BadSignature)?;
    pinned_identity_key
        .verify_strict(&signed_message(json), &sig)
        .map_err(|_| CredentialError::BadSignature)?;

    let binding: Binding =
        serde_json::from_slice(json).map_err(|e| CredentialError::Malformed(e.to_string()))?;
    if binding.v != BINDING_VERSION {
        return Err(CredentialError::UnsupportedVersion(binding.v));
    }
    if binding.server_id != expected_server_id {
        return Err(CredentialError::WrongServer {
            found: binding.server_id,
            expected: expected_server_id.to_owned(),
        });
    }
    if binding.meeting_id != expected_meeting_id {
        return Err(CredentialError::WrongMeeting {
            found: binding.meeting_id,
            expected: expected_meeting_id.to_owned(),
        });
    }
    let claimed = URL_SAFE_NO_PAD
        .decode(binding.signature_key.as_bytes())
        .map_err(|_| CredentialError::SignatureKeyMismatch)?;
    if claimed.as_slice() != leaf_signature_key {
        return Err(CredentialError::SignatureKeyMismatch);
    }
    Ok(binding)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "https://sealroom.example:8443";
    const MEETING: &str = "m-0123456789abcdef";

    fn server_key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn binding(leaf_key: &[u8]) -> Binding {
        Binding {
            v: 1,
            server_id: SERVER.into(),
            meeting_id: MEETING.into(),
            user_id: "u-1".into(),
            username: "ada".into(),
            display_name: "Ada Lovelace".into(),
            device_id: "d-1".into(),
            device_name: "laptop".into(),
            device_kind: "passkey".into(),
            signature_key: Binding::encode_signature_key(leaf_key),
            issued_at: 1_700_000_000,
        }
    }

    fn check(identity: &[u8], leaf: &[u8]) -> Result<Binding, CredentialError> {
        verify(
            identity,
            &server_key().verifying_key(),
            SERVER,
            MEETING,
            leaf,
        )
    }

    #[test]
    fn issued_binding_verifies() {
        let leaf = [9u8; 32];
        let b = binding(&leaf);
        let id = issue(&server_key(), &b).expect("issue");
        assert_eq!(check(&id, &leaf).expect("verifies"), b);
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let leaf = [9u8; 32];
        let id = issue(&server_key(), &binding(&leaf)).expect("issue");
        for i in 0..id.len() {
            let mut t = id.clone();
            t[i] ^= 0x01;
            assert!(check(&t, &leaf).is_err(), "flipped byte {i} accepted");
        }
    }

    #[test]
    fn wrong_server_key_is_refused() {
        let leaf = [9u8; 32];
        let id = issue(&server_key(), &binding(&leaf)).expect("issue");
        let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
        assert_eq!(
            verify(&id, &other, SERVER, MEETING, &leaf),
            Err(CredentialError::BadSignature)
        );
    }

    #[test]
    fn wrong_meeting_and_server_are_refused() {
        let leaf = [9u8; 32];
        let id = issue(&server_key(), &binding(&leaf)).expect("issue");
        let pk = server_key().verifying_key();
        assert!(matches!(
            verify(&id, &pk, SERVER, "m-other", &leaf),
            Err(CredentialError::WrongMeeting { .. })
        ));
        assert!(matches!(
            verify(&id, &pk, "https://evil.example", MEETING, &leaf),
            Err(CredentialError::WrongServer { .. })
        ));
    }

    #[test]
    fn signature_key_mismatch_is_refused() {
        let id = issue(&server_key(), &binding(&[9u8; 32])).expect("issue");
        assert_eq!(
            check(&id, &[10u8; 32]),
            Err(CredentialError::SignatureKeyMismatch)
        );
    }

    #[test]
    fn unsupported_version_is_refused() {
        let leaf = [9u8; 32];
        let mut b = binding(&leaf);
        b.v = 2;
        let id = issue(&server_key(), &b).expect("issue");
        assert_eq!(
            check(&id, &leaf),
            Err(CredentialError::UnsupportedVersion(2))
        );
    }

    #[test]
    fn truncated_and_padded_inputs_never_panic() {
        let leaf = [9u8; 32];
        let id = issue(&server_key(), &binding(&leaf)).expect("issue");
        for n in 0..id.len() {
            assert!(check(&id[..n], &leaf).is_err(), "prefix of {n} accepted");
        }
        let mut longer = id.clone();
        longer.push(0);
        assert_eq!(
            check(&longer, &leaf),
            Err(CredentialError::TrailingBytes(1))
        );
        // A length prefix that claims more than is there.
        assert_eq!(
            check(&[0xff, 0xff, 1, 2, 3], &leaf),
            Err(CredentialError::Truncated)
        );
    }

    #[test]
    fn signed_garbage_is_malformed_not_a_panic() {
        let key = server_key();
        let json = b"{\"v\":1}";
        let sig = key.sign(&signed_message(json));
        let mut id = (json.len() as u16).to_be_bytes().to_vec();
        id.extend_from_slice(json);
        id.extend_from_slice(&sig.to_bytes());
        assert!(matches!(
            check(&id, &[9u8; 32]),
            Err(CredentialError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_members_are_ignored() {
        let leaf = [9u8; 32];
        let key = server_key();
        let mut value = serde_json::to_value(binding(&leaf)).expect("to value");
        value["future_member"] = serde_json::json!({"x": 1});
        let json = serde_json::to_vec(&value).expect("json");
        let sig = key.sign(&signed_message(&json));
        let mut id = (json.len() as u16).to_be_bytes().to_vec();
        id.extend_from_slice(&json);
        id.extend_from_slice(&sig.to_bytes());
        assert_eq!(check(&id, &leaf).expect("verifies"), binding(&leaf));
    }
}
