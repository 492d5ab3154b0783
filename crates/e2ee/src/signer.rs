//! An openmls [`Signer`] over an Ed25519 key held by `ed25519-dalek`.

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use openmls_traits::{
    signatures::{Signer, SignerError},
    types::SignatureScheme,
};

/// Signs MLS messages with an Ed25519 key (member leaf keys and the server's external-sender
/// identity key). openmls adds the `"MLS 1.0 "` label before calling [`Signer::sign`].
#[derive(Clone)]
pub struct Ed25519Signer(SigningKey);

impl std::fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Ed25519Signer")
            .field(&self.0.verifying_key())
            .finish()
    }
}

impl Ed25519Signer {
    /// Wraps a signing key.
    pub fn new(key: SigningKey) -> Self {
        Ed25519Signer(key)
    }

    /// The public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.0.verifying_key()
    }

    /// The public key bytes as MLS carries them.
    pub fn public_bytes(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }
}

impl Signer for Ed25519Signer {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        Ok(self.0.sign(payload).to_bytes().to_vec())
    }

    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}
