//! Test certificates for the TLS tests (AVP-HTTP-70..75), made with rcgen at
//! run time: no private key is ever committed.

/// A test CA, a server certificate for 127.0.0.1 and a client certificate,
/// written as PEM files into `dir` (made at run time, never committed).
/// Returns [ca, server cert, server key, client cert, client key].
pub(crate) fn test_pki(dir: &std::path::Path) -> [std::path::PathBuf; 5] {
    test_pki_named(dir, &["127.0.0.1", "localhost"])
}

/// [`test_pki`] with a server certificate for `server_names` only.
pub(crate) fn test_pki_named(
    dir: &std::path::Path,
    server_names: &[&str],
) -> [std::path::PathBuf; 5] {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "AVP test CA");
    let ca_key = KeyPair::generate().expect("key");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let leaf = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &ca, &ca_key).expect("sign");
        (cert, key)
    };
    let (server, server_key) = leaf(
        server_names.iter().map(|n| (*n).to_owned()).collect(),
        "avp server",
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client, client_key) = leaf(vec![], "avp client", ExtendedKeyUsagePurpose::ClientAuth);
    let files = [
        ("ca.pem", ca.pem()),
        ("server.pem", server.pem()),
        ("server.key", server_key.serialize_pem()),
        ("client.pem", client.pem()),
        ("client.key", client_key.serialize_pem()),
    ];
    files.map(|(name, pem)| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("write PEM");
        path
    })
}

/// A client that trusts only `ca` (none: no root at all), presents no
/// certificate and does not retry: the TLS tests' view of a plain HTTPS peer.
pub(crate) fn client_trusting(ca: Option<std::path::PathBuf>) -> avp_transport::ClientConfig {
    use avp_transport::tls::{ClientTlsFiles, client_config};
    avp_transport::ClientConfig {
        tls: Some(
            client_config(&ClientTlsFiles {
                ca,
                client_cert: None,
            })
            .expect("client TLS"),
        ),
        retries: 0,
        ..avp_transport::ClientConfig::default()
    }
}
