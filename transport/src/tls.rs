//! TLS with rustls (AVP-HTTP-70..75): server and client configurations from
//! PEM files, ALPN `h2` then `http/1.1`, TLS 1.3 and 1.2 only, and the
//! identity a client certificate proves under mutual TLS.
//!
//! Only the `ring` provider is compiled in: it builds quickly everywhere and
//! covers the TLS 1.2/1.3 suites rustls offers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::error::TransportError;

/// ALPN protocols a server offers, in preference order (AVP-HTTP-71).
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// PEM files for a TLS server.
#[derive(Debug, Clone)]
pub struct ServerTlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate that chains to one of
    /// these CAs (mutual TLS, AVP-HTTP-73).
    pub client_ca: Option<PathBuf>,
}

/// PEM files for a TLS client.
#[derive(Debug, Clone, Default)]
pub struct ClientTlsFiles {
    /// CAs to trust instead of none; without it `https://` cannot be verified.
    pub ca: Option<PathBuf>,
    /// Client certificate chain and key, for servers that require mTLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

// rustls 0.23.48 deprecates ring's provider because it lacks post-quantum
// key exchange (aws-lc-rs has it); we keep ring for its build (no cmake, a
// fraction of the compile time on our 2-core builders) and say so in
// spec/impl/transport.md (AVP-HTTP-70).
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(what: &Path, why: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(format!("{}: {why}", what.display()))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| tls_error(path, err))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| tls_error(path, err))?;
    if certs.is_empty() {
        return Err(tls_error(path, "no CERTIFICATE in the PEM file"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    PrivateKeyDer::from_pem_file(path).map_err(|err| tls_error(path, err))
}

fn read_roots(path: &Path) -> Result<RootCertStore, TransportError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|err| tls_error(path, err))?;
    }
    Ok(roots)
}

/// A rustls server configuration from PEM files, with ALPN h2/http1.1.
pub fn server_config(files: &ServerTlsFiles) -> Result<Arc<rustls::ServerConfig>, TransportError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|err| TransportError::Tls(err.to_string()))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(read_roots(ca)?), provider())
                    .build()
                    .map_err(|err| tls_error(ca, err))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(read_certs(&files.cert)?, read_key(&files.key)?)
        .map_err(|err| tls_error(&files.key, err))?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A rustls client configuration: trusts `ca` (only), presents the client
/// certificate when given. ALPN is set by the connector.
pub fn client_config(files: &ClientTlsFiles) -> Result<rustls::ClientConfig, TransportError> {
    let roots = match &files.ca {
        Some(ca) => read_roots(ca)?,
        None => RootCertStore::empty(),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|err| TransportError::Tls(err.to_string()))?
        .with_root_certificates(roots);
    match &files.client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(|err| tls_error(key, err)),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// What a verified client certificate proves (AVP-HTTP-74):
/// `sha256:<64 hex>` of the leaf certificate's DER bytes.
pub fn client_identity(leaf: &[u8]) -> String {
    let digest = Sha256::digest(leaf);
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}
