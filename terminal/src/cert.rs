//! The app's client certificate: a self-signed EC (P-256) certificate and key
//! generated per run; ttyd checks clients against it (`--ssl-ca ca.crt`).

use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::fsutil::write_atomic;

/// Name of the certificate file in the internal share.
pub const CA_FILE: &str = "ca.crt";

/// Errors generating or writing the certificate.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters or key.
    #[error("client certificate: generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing `ca.crt` failed.
    #[error("client certificate: cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A client identity: certificate and private key.
#[derive(Debug)]
pub struct ClientCert {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_der: PrivatePkcs8KeyDer<'static>,
}

impl Clone for ClientCert {
    fn clone(&self) -> Self {
        Self {
            cert_pem: self.cert_pem.clone(),
            cert_der: self.cert_der.clone(),
            key_der: self.key_der.clone_key(),
        }
    }
}

impl ClientCert {
    /// Generates a fresh self-signed P-256 certificate with `common_name`.
    pub fn generate(common_name: &str) -> Result<Self, CertError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        // No keyUsage extension: OpenSSL (ttyd's libwebsockets) would then
        // demand keyCertSign before treating the cert as its own issuer.
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_der: PrivatePkcs8KeyDer::from(key.serialize_der()),
        })
    }

    /// The certificate as PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The certificate as DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The private key (PKCS#8 DER).
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone_key())
    }

    /// Writes the certificate PEM to `<internal>/ca.crt` atomically.
    pub fn write_ca(&self, internal: &Path) -> Result<PathBuf, CertError> {
        let path = internal.join(CA_FILE);
        write_atomic(&path, self.cert_pem.as_bytes()).map_err(|source| CertError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_parseable_ec_cert_and_writes_pem() {
        let a = ClientCert::generate("avf-terminal").unwrap();
        let b = ClientCert::generate("avf-terminal").unwrap();
        assert_ne!(a.cert_der(), b.cert_der(), "one certificate per run");

        let dir = tempfile::tempdir().unwrap();
        let path = a.write_ca(dir.path()).unwrap();
        let pem = std::fs::read(&path).unwrap();
        let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(certs.len(), 1);
        assert_eq!(&certs[0], a.cert_der());

        // The key is an EC P-256 key rustls can sign with.
        let provider = rustls::crypto::ring::default_provider();
        let signing = provider.key_provider.load_private_key(a.key_der()).unwrap();
        assert_eq!(signing.algorithm(), rustls::SignatureAlgorithm::ECDSA);

        // Nothing but ca.crt is left behind (temp file renamed).
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(CA_FILE)]);
    }

    #[test]
    fn unwritable_share_names_the_file() {
        let a = ClientCert::generate("x").unwrap();
        let err = a.write_ca(Path::new("/nonexistent/avf-share")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/avf-share/ca.crt"),
            "{err}"
        );
    }
}
