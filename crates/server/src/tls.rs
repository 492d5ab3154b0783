//! TLS for non-loopback listeners: certificate files, or a generated local CA.
//!
//! `--tls-self-signed` creates a CA that is name-constrained to the public host (so even if
//! someone trusts it, it can vouch for nothing else), signs a server certificate with it, and
//! drops the CA key: no further certificate can ever be issued from it. The CA certificate is
//! kept (`ca.pem`) so admins can install it; its SHA-256 fingerprint is printed.

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, GeneralSubtree, IsCa, KeyPair, KeyUsagePurpose,
    NameConstraints, SanType,
};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Paths of the generated material.
pub struct SelfSigned {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca_fingerprint: String,
}

fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Create (or reuse, if made for the same host) a CA and server certificate in `dir`.
pub fn self_signed(dir: &Path, host: &str) -> anyhow::Result<SelfSigned> {
    let dir = dir.join("tls");
    std::fs::create_dir_all(&dir)?;
    let out = SelfSigned {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        ca_fingerprint: String::new(),
    };
    let host_file = dir.join("host");
    if out.ca.exists()
        && out.cert.exists()
        && out.key.exists()
        && std::fs::read_to_string(&host_file).ok().as_deref() == Some(host)
    {
        let pem = std::fs::read_to_string(&out.ca)?;
        let der = rustls_pemfile_der(&pem).context("reading ca.pem")?;
        return Ok(SelfSigned {
            ca_fingerprint: fingerprint(&der),
            ..out
        });
    }
    let ip: Option<IpAddr> = host.parse().ok();
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, format!("sealroom local CA for {host}"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![match ip {
            Some(ip) => GeneralSubtree::IpAddress(rcgen::CidrSubnet::from_addr_prefix(
                ip,
                if ip.is_ipv4() { 32 } else { 128 },
            )),
            None => GeneralSubtree::DnsName(host.to_string()),
        }],
        excluded_subtrees: vec![],
    });
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;

    let mut leaf = CertificateParams::default();
    leaf.distinguished_name
        .push(DnType::CommonName, host.to_string());
    leaf.subject_alt_names = vec![match ip {
        Some(ip) => SanType::IpAddress(ip),
        None => SanType::DnsName(host.try_into()?),
    }];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate()?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    // The CA key goes out of scope here and is never written anywhere.
    drop(issuer);

    std::fs::write(&out.ca, ca_cert.pem())?;
    std::fs::write(&out.cert, format!("{}{}", leaf_cert.pem(), ca_cert.pem()))?;
    crate::state::write_private(&out.key, leaf_key.serialize_pem().as_bytes())?;
    std::fs::write(&host_file, host)?;
    Ok(SelfSigned {
        ca_fingerprint: fingerprint(ca_cert.der()),
        ..out
    })
}

/// DER of the first PEM certificate in `pem`.
fn rustls_pemfile_der(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let start = pem.find("-----BEGIN CERTIFICATE-----")? + "-----BEGIN CERTIFICATE-----".len();
    let end = pem[start..].find("-----END CERTIFICATE-----")? + start;
    let b64: String = pem[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// The rustls server configuration for the listener.
pub async fn rustls_config(
    cert: &Path,
    key: &Path,
) -> anyhow::Result<axum_server::tls_rustls::RustlsConfig> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .with_context(|| {
            format!(
                "loading TLS certificate {} and key {}",
                cert.display(),
                key.display()
            )
        })
}
