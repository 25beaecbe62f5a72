//! The mesh CA: issues short-lived SPIFFE X.509 certificates for a CSR, to the
//! identity the caller proved, never to what the CSR asks for.
//!
//! * Kubernetes mode: the caller's projected service-account token (audience
//!   `revmesh-ca`) is checked with a TokenReview; the certificate names exactly
//!   that service account: `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
//! * Dir mode: bootstrap tokens from a file, each bound to one identity.
//!
//! HTTPS API (on the CA port, 15012): `POST /v1/certificate` with
//! `Authorization: Bearer <token>` and `{"csr": "<PEM>", "ttlSeconds": 3600}`;
//! `GET /v1/root` for the root certificate. Tokens never reach the logs.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use std::collections::HashMap;
use std::time::Duration;

/// A workload identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub namespace: String,
    pub service_account: String,
}

impl Identity {
    pub fn spiffe(&self, trust_domain: &str) -> String {
        format!("spiffe://{trust_domain}/ns/{}/sa/{}", self.namespace, self.service_account)
    }

    /// From a Kubernetes username `system:serviceaccount:<ns>:<sa>`.
    pub fn from_service_account_username(user: &str) -> Option<Identity> {
        let rest = user.strip_prefix("system:serviceaccount:")?;
        let (ns, sa) = rest.split_once(':')?;
        (!ns.is_empty() && !sa.is_empty() && !sa.contains(':')).then(|| Identity { namespace: ns.into(), service_account: sa.into() })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("the CSR is not a valid, correctly signed PKCS#10 request in PEM")]
    BadCsr,
    #[error("loading the CA: {0}")]
    Load(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    root_pem: String,
    pub trust_domain: String,
    pub max_ttl: Duration,
}

impl Ca {
    /// A fresh self-signed root (development, and tests).
    pub fn generate(trust_domain: &str) -> Result<Ca, CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Load(e.to_string()))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| CaError::Load(e.to_string()))?;
        params.distinguished_name.push(DnType::OrganizationName, "Revmesh");
        params.distinguished_name.push(DnType::CommonName, format!("Revmesh root CA for {trust_domain}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).map_err(|e| CaError::Load(e.to_string()))?;
        let root_pem = cert.pem();
        Ok(Ca { cert, key, root_pem, trust_domain: trust_domain.into(), max_ttl: Duration::from_secs(24 * 3600) })
    }

    /// A root from PEM files (or a Secret's `tls.crt` / `tls.key`).
    pub fn from_pem(cert_pem: &str, key_pem: &str, trust_domain: &str) -> Result<Ca, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Load(format!("the CA key: {e}")))?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem).map_err(|e| CaError::Load(format!("the CA certificate: {e}")))?;
        // rcgen signs with an issuer built from the same name and key; the
        // published root stays the operator's original certificate.
        let cert = params.self_signed(&key).map_err(|e| CaError::Load(e.to_string()))?;
        Ok(Ca { cert, key, root_pem: cert_pem.to_string(), trust_domain: trust_domain.into(), max_ttl: Duration::from_secs(24 * 3600) })
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The private key, for storing a generated root in its Secret. Never log it.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Signs `csr_pem` for `identity`, valid for `ttl` (capped at `max_ttl`).
    /// Only the CSR's public key is used: names come from the proven identity.
    pub fn sign(&self, csr_pem: &str, identity: &Identity, ttl: Duration) -> Result<(String, time::OffsetDateTime), CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|_| CaError::BadCsr)?;
        let ttl = ttl.min(self.max_ttl).max(Duration::from_secs(60));
        let now = time::OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::OrganizationName, "Revmesh");
        let uri = identity.spiffe(&self.trust_domain);
        params.subject_alt_names = vec![SanType::URI(uri.as_str().try_into().map_err(|e: rcgen::Error| CaError::Sign(e.to_string()))?)];
        // Allow for small clock skew between the CA and peers.
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + time::Duration::seconds(ttl.as_secs() as i64);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let csr = CertificateSigningRequestParams { params, public_key: csr.public_key };
        let cert = csr.signed_by(&self.cert, &self.key).map_err(|e| CaError::Sign(e.to_string()))?;
        Ok((cert.pem(), params_not_after(now, ttl)))
    }

    /// A serving certificate for the control plane's own TLS port, valid for
    /// `lifetime` (the server re-issues it before then).
    pub fn serving_cert(&self, dns_names: &[String], lifetime: Duration) -> Result<(String, String), CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
        let mut params = CertificateParams::new(dns_names.to_vec()).map_err(|e| CaError::Sign(e.to_string()))?;
        params.subject_alt_names.push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        params.distinguished_name.push(DnType::CommonName, "revmesh control plane");
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = params_not_after(now, lifetime);
        let cert = params.signed_by(&key, &self.cert, &self.key).map_err(|e| CaError::Sign(e.to_string()))?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn params_not_after(now: time::OffsetDateTime, ttl: Duration) -> time::OffsetDateTime {
    now + time::Duration::seconds(ttl.as_secs() as i64)
}

/// Bootstrap tokens for dir mode: lines of `<token> <namespace>/<serviceaccount>`.
pub fn parse_bootstrap_tokens(text: &str) -> Result<HashMap<String, Identity>, String> {
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(token), Some(who), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("line {}: expected `<token> <namespace>/<serviceaccount>`", i + 1));
        };
        let Some((ns, sa)) = who.split_once('/') else {
            return Err(format!("line {}: {who:?} is not <namespace>/<serviceaccount>", i + 1));
        };
        if token.len() < 16 {
            return Err(format!("line {}: tokens must be at least 16 characters", i + 1));
        }
        out.insert(token.to_string(), Identity { namespace: ns.into(), service_account: sa.into() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    fn csr(requested: &str) -> (String, KeyPair) {
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(vec![requested.to_string()]).expect("params");
        let csr = params.serialize_request(&key).expect("csr");
        (csr.pem().expect("pem"), key)
    }

    #[test]
    fn issues_only_the_proven_identity() {
        let ca = Ca::generate("cluster.local").expect("ca");
        let (csr_pem, _key) = csr("admin.kube-system.svc");
        let who = Identity { namespace: "shop".into(), service_account: "web".into() };
        let (pem, not_after) = ca.sign(&csr_pem, &who, Duration::from_secs(3600)).expect("signed");
        let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
        let san = cert.subject_alternative_name().expect("ext").expect("san");
        let names: Vec<String> = san.value.general_names.iter().map(|n| n.to_string()).collect();
        assert_eq!(names, ["URI(spiffe://cluster.local/ns/shop/sa/web)"], "the CSR's own name is ignored");
        assert!(!cert.is_ca());
        let lifetime = not_after - time::OffsetDateTime::now_utc();
        assert!(lifetime <= time::Duration::hours(1) && lifetime > time::Duration::minutes(59));
    }

    #[test]
    fn ttl_is_capped_and_bad_csrs_are_refused() {
        let ca = Ca::generate("td").expect("ca");
        let (csr_pem, _) = csr("x");
        let who = Identity { namespace: "a".into(), service_account: "b".into() };
        let (_, not_after) = ca.sign(&csr_pem, &who, Duration::from_secs(365 * 24 * 3600)).expect("signed");
        assert!(not_after - time::OffsetDateTime::now_utc() <= time::Duration::hours(24));
        assert!(matches!(ca.sign("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", &who, Duration::from_secs(60)), Err(CaError::BadCsr)));
        // A CSR whose signature does not match its key.
        let tampered = csr_pem.replace("A", "B");
        assert!(ca.sign(&tampered, &who, Duration::from_secs(60)).is_err());
    }

    #[test]
    fn service_account_usernames_and_bootstrap_tokens() {
        assert_eq!(
            Identity::from_service_account_username("system:serviceaccount:shop:web"),
            Some(Identity { namespace: "shop".into(), service_account: "web".into() })
        );
        assert_eq!(Identity::from_service_account_username("alice"), None);
        assert_eq!(Identity::from_service_account_username("system:serviceaccount:shop:"), None);
        let tokens = parse_bootstrap_tokens("# dev\n0123456789abcdef shop/web\n").expect("tokens");
        assert_eq!(tokens["0123456789abcdef"].service_account, "web");
        assert!(parse_bootstrap_tokens("short shop/web").is_err());
        assert!(parse_bootstrap_tokens("0123456789abcdef shopweb").is_err());
    }
}
