//! TLS to the server, on rustls (with ring's primitives, already in strongroom's tree).
//!
//! - `verify-full`: the server's certificate must chain to the configured root certificate
//!   (`sslrootcert`) and name the host connected to. What a deployment should use.
//! - `require` and `prefer`: encrypted, the certificate not checked (libpq's meaning of these
//!   modes): protects against a passive eavesdropper, not against an active one.
//! - a client certificate and key (`sslcert`, `sslkey`) for servers that authenticate clients
//!   by certificate (`pg_hba.conf` method `cert`).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use strongroom_store::EngineError;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{SslMode, TlsSettings};
use crate::error::config_error;

/// The connector for `tls` (also for `disable`: the client then never starts TLS).
pub(crate) fn connector(tls: &TlsSettings) -> Result<MakeRustlsConnect, EngineError> {
    // ring's primitives (already in strongroom's tree for the record cipher); rustls marks this
    // provider deprecated because it offers no post-quantum key exchange. The aws-lc-rs
    // provider would add one, and a C build of AWS-LC to the tree.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(format!("TLS setup failed: {e}")))?;
    let builder = match tls.mode {
        SslMode::VerifyFull => {
            let path = tls.root_cert.as_ref().ok_or_else(|| {
                config_error(
                    "sslmode=verify-full needs the root certificate that signed the server's: add sslrootcert=<file> to the URL",
                )
            })?;
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| {
                    config_error(format!(
                        "the root certificate file {} could not be read: {e}",
                        path.display()
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    config_error(format!(
                        "the root certificate file {} is not PEM: {e}",
                        path.display()
                    ))
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(config_error(format!(
                    "the root certificate file {} holds no usable certificate",
                    path.display()
                )));
            }
            builder.with_root_certificates(roots)
        }
        SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider))),
    };
    let config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .map_err(|e| {
                    config_error(format!(
                        "the client certificate {} could not be read: {e}",
                        cert.display()
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    config_error(format!(
                        "the client certificate {} is not PEM: {e}",
                        cert.display()
                    ))
                })?;
            // As libpq: a key that its group or other users can read is refused.
            {
                use std::os::unix::fs::PermissionsExt as _;
                let mode = std::fs::metadata(key)
                    .map_err(|e| {
                        config_error(format!(
                            "the client key {} could not be read: {e}",
                            key.display()
                        ))
                    })?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(config_error(format!(
                        "the client key {} has mode {:o}: other users can read it; `chmod 600` it (and replace the key if it was exposed)",
                        key.display(),
                        mode & 0o777
                    )));
                }
            }
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                // Never the key's bytes: the file name and the parser's reason only.
                config_error(format!(
                    "the client key {} could not be read as a PEM private key: {e}",
                    key.display()
                ))
            })?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| config_error(format!("the client certificate and key: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(config_error(
                "a client certificate needs its key and the other way round: give both sslcert and sslkey",
            ));
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

/// `require`/`prefer`: the handshake's signatures are checked (so the session is encrypted
/// to whoever holds the presented certificate's key), the certificate itself is not.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
