//! TLS for the server (`caskv serve --tls-cert --tls-key [--tls-client-ca]`): rustls with the
//! ring provider through tokio-rustls, no OpenSSL.
//!
//! The acceptor sits behind an `ArcSwap`: [`Tls::reload`] (on SIGHUP) reads the files again
//! and swaps a new one in whole; a connection keeps the configuration it was accepted with, the
//! next ones get the new; files that do not read or parse leave the old acceptor in place.
//! With a client CA, every client must present a certificate signed by it (mutual TLS).
//!
//! A client that speaks plain HTTP to a TLS port gets a plain-text `400` saying so, instead of
//! a handshake failure it would show as a reset connection ([`answer_plain_http`]).

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

/// Where the certificate, its key and (for mutual TLS) the client CA are read from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to; `None`: no client
    /// certificate is asked for.
    pub client_ca: Option<PathBuf>,
}

/// The server's TLS: its files and the acceptor last made from them.
pub struct Tls {
    files: TlsFiles,
    acceptor: ArcSwap<TlsAcceptor>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl Tls {
    /// Reads and checks the files.
    pub fn load(files: TlsFiles) -> Result<Tls, String> {
        let acceptor = acceptor(&files)?;
        Ok(Tls {
            files,
            acceptor: ArcSwap::from_pointee(acceptor),
        })
    }

    /// Reads the files again and swaps the new certificate (and client CA) in; on an error
    /// the old ones stay.
    pub fn reload(&self) -> Result<(), String> {
        match acceptor(&self.files) {
            Ok(new) => {
                self.acceptor.store(Arc::new(new));
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS reload failed; the previous certificate stays");
                Err(e)
            }
        }
    }

    /// The acceptor for the next connection.
    pub(crate) fn acceptor(&self) -> Arc<TlsAcceptor> {
        self.acceptor.load_full()
    }
}

/// The PEM certificates in `path`.
fn certificates(
    path: &std::path::Path,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "the {what} {} holds no certificate",
            path.display()
        ));
    }
    Ok(certs)
}

/// A TLS acceptor for `files` (HTTP/1.1 only, as the server).
fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, String> {
    let certs = certificates(&files.cert, "TLS certificate file")?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("cannot read the TLS key file {}: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(path, "client CA file")? {
                roots
                    .add(cert)
                    .map_err(|e| format!("the client CA file {}: {e}", path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("the client CA file {}: {e}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "the TLS certificate {} and key {} do not make a certificate: {e}",
            files.cert.display(),
            files.key.display()
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// If `stream` starts with something other than a TLS handshake (a plain HTTP request, say),
/// answers it with a plain-text `400` that says to use `https://`, and returns `true` (the
/// connection is then done). Waits for the first byte.
pub(crate) async fn answer_plain_http(stream: &mut TcpStream) -> bool {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(1) if first[0] != TLS_HANDSHAKE => {
            let body = r#"{"error":"bad request","message":"this port speaks TLS: use https://"}"#;
            let response = format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
            true
        }
        Ok(_) => false,
        Err(_) => true,
    }
}
