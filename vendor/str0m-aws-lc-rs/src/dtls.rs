//! DTLS implementation using dimpl with AWS-LC-RS backend.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use str0m_proto::crypto::CryptoError;
use str0m_proto::crypto::DtlsVersion;
use str0m_proto::crypto::dtls::ProtocolVersion;
use str0m_proto::crypto::dtls::{DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider};

// ============================================================================
// DTLS Provider Implementation
// ============================================================================

#[derive(Debug)]
pub(super) struct AwsLcRsDtlsProvider;

impl DtlsProvider for AwsLcRsDtlsProvider {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        // Use dimpl's rcgen-based certificate generation (with aws-lc-rs backend)
        dimpl::certificate::generate_self_signed_certificate()
            .ok()
            .map(|cert| DtlsCert {
                certificate: cert.certificate,
                private_key: cert.private_key,
            })
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let dimpl_cert = dimpl::DtlsCertificate {
            certificate: cert.certificate.clone(),
            private_key: cert.private_key.clone(),
        };

        let config = shared_config(mtu, self.is_test())?;
        let dtls = match dtls_version {
            DtlsVersion::Dtls12 => dimpl::Dtls::new_12(config, dimpl_cert, now),
            DtlsVersion::Dtls13 => dimpl::Dtls::new_13(config, dimpl_cert, now),
            DtlsVersion::Auto => dimpl::Dtls::new_auto(config, dimpl_cert, now),
            _ => {
                return Err(CryptoError::Other(format!(
                    "Unsupported DTLS version: {dtls_version}"
                )));
            }
        };

        Ok(Box::new(AwsLcRsDtlsInstance { dtls }))
    }
}

/// sealroom: the dimpl `Config` for `(mtu, is_test)`, built once and shared by every DTLS
/// instance (it is immutable; each instance seeds its own RNG from it).
///
/// Upstream builds a fresh `Config` per `new_dtls`, and dimpl's `ConfigBuilder::build` always
/// self-tests the crypto provider (an ECDH exchange per key-exchange group, signature
/// verifications, AEAD and PRF checks): about 11 M instructions, several milliseconds, for
/// every `Rtc`, on an SFU's media thread at every join. The self-test still runs, once per
/// process and configuration, and a failure is still an error for every instance asking.
fn shared_config(mtu: Option<usize>, is_test: bool) -> Result<Arc<dimpl::Config>, CryptoError> {
    type Built = ((Option<usize>, bool), Result<Arc<dimpl::Config>, String>);
    static CONFIGS: Mutex<Vec<Built>> = Mutex::new(Vec::new());

    // A poisoned lock only means another thread panicked while building; the list itself
    // holds complete entries only.
    let mut configs = CONFIGS.lock().unwrap_or_else(|e| e.into_inner());
    let key = (mtu, is_test);
    if let Some((_, built)) = configs.iter().find(|(k, _)| *k == key) {
        return built.clone().map_err(CryptoError::Other);
    }

    // Create a default dimpl Config with AWS-LC-RS crypto provider
    // ICE verifies return routability before DTLS, making server cookies redundant.
    let mut builder = dimpl::Config::builder().use_server_cookie(false);
    if let Some(mtu) = mtu {
        builder = builder.mtu(mtu);
    }
    if is_test {
        // We need the DTLS impl to be deterministic for the BWE tests.
        builder = builder.dangerously_set_rng_seed(42);
    }
    let built = builder
        .build()
        .map(Arc::new)
        .map_err(|e| format!("dimpl config creation failed: {}", e));
    configs.push((key, built.clone()));
    built.map_err(CryptoError::Other)
}

// ============================================================================
// DTLS Instance Wrapper
// ============================================================================

struct AwsLcRsDtlsInstance {
    dtls: dimpl::Dtls,
}

impl std::fmt::Debug for AwsLcRsDtlsInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsLcRsDtlsInstance").finish()
    }
}

impl DtlsInstance for AwsLcRsDtlsInstance {
    fn set_active(&mut self, active: bool) {
        self.dtls.set_active(active);
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.dtls.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        self.dtls.poll_output(buf)
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.dtls.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.dtls.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.dtls.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.dtls.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.dtls.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.dtls.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.dtls.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // sealroom: the tests of the one change (PATCHES.md).

    #[test]
    fn one_config_is_shared_per_mtu_and_mode() {
        let a = shared_config(Some(1150), false).expect("builds");
        let b = shared_config(Some(1150), false).expect("builds");
        assert!(
            Arc::ptr_eq(&a, &b),
            "the second instance reuses the first's config"
        );
        assert_eq!(a.mtu(), 1150);

        let other_mtu = shared_config(Some(1160), false).expect("builds");
        assert!(!Arc::ptr_eq(&a, &other_mtu));
        assert_eq!(other_mtu.mtu(), 1160);

        let test_mode = shared_config(Some(1150), true).expect("builds");
        assert!(!Arc::ptr_eq(&a, &test_mode));
        assert_eq!(test_mode.rng_seed(), Some(42));
        assert_eq!(a.rng_seed(), None);
    }

    #[test]
    fn a_config_that_fails_to_build_fails_for_every_instance() {
        // dimpl refuses an MTU below 64; the refusal is kept, not replaced by a default.
        for _ in 0..2 {
            let err = shared_config(Some(10), false).expect_err("an MTU of 10 is refused");
            assert!(
                matches!(&err, CryptoError::Other(m) if m.starts_with("dimpl config creation failed")),
                "{err:?}"
            );
        }
    }

    #[test]
    fn instances_from_the_shared_config_still_handshake_with_each_other() {
        let provider = AwsLcRsDtlsProvider;
        let now = Instant::now();
        let cert_a = provider.generate_certificate().expect("cert");
        let cert_b = provider.generate_certificate().expect("cert");
        let mut a = provider
            .new_dtls(&cert_a, now, DtlsVersion::Dtls12, None)
            .expect("dtls");
        let mut b = provider
            .new_dtls(&cert_b, now, DtlsVersion::Dtls12, None)
            .expect("dtls");
        a.set_active(true);
        b.set_active(false);
        a.handle_timeout(now).expect("start");
        b.handle_timeout(now).expect("start");

        let mut connected = (false, false);
        for _ in 0..200 {
            connected.0 |= deliver(&mut *a, &mut *b);
            connected.1 |= deliver(&mut *b, &mut *a);
            if connected == (true, true) {
                break;
            }
        }
        assert_eq!(connected, (true, true), "both ends complete the handshake");
    }

    /// Hands every record `from` has to `to`; true if `from` reported the handshake done.
    fn deliver(from: &mut dyn DtlsInstance, to: &mut dyn DtlsInstance) -> bool {
        let mut buf = vec![0u8; 2048];
        let mut connected = false;
        loop {
            match from.poll_output(&mut buf) {
                DtlsOutput::Packet(p) => {
                    let p = p.to_vec();
                    to.handle_packet(&p).expect("a valid record");
                }
                DtlsOutput::Connected => connected = true,
                DtlsOutput::Timeout(_) => return connected,
                _ => {}
            }
        }
    }
}
