//! TLS and mutual TLS on a real server on loopback, with certificates made in the test (rcgen):
//! a CA, a server certificate for 127.0.0.1 and localhost, and a client certificate.

#[path = "support/pki.rs"]
mod pki;
#[path = "support/server.rs"]
mod server;

use std::path::PathBuf;
use std::sync::Arc;

use caskv::server::tls::{Tls, TlsFiles};
use caskv::server::ConnLimits;
use pki::{pki, Pki};
use server::{in_memory, Server};
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};

/// The PEM files of a [`Pki`] in a temporary directory.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(pki: &Pki) -> Files {
        let files = Files {
            dir: tempfile::tempdir().unwrap(),
        };
        files.write(pki);
        files
    }

    fn write(&self, pki: &Pki) {
        for (name, text) in [
            ("ca.pem", &pki.ca),
            ("server.pem", &pki.server_cert),
            ("server.key", &pki.server_key),
        ] {
            std::fs::write(self.path(name), text).unwrap();
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn tls(&self, mutual: bool) -> TlsFiles {
        TlsFiles {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: mutual.then(|| self.path("ca.pem")),
        }
    }
}

fn serve(tls: Arc<Tls>) -> Server {
    Server::spawn(
        in_memory(),
        ConnLimits {
            tls: Some(tls),
            ..ConnLimits::default()
        },
    )
}

/// A client that trusts `ca` only, presenting `client` (certificate and key) if given.
fn client(ca: &str, client: Option<(&str, &str)>) -> ureq::Agent {
    let mut tls = TlsConfig::builder().root_certs(RootCerts::Specific(Arc::new(vec![
        Certificate::from_pem(ca.as_bytes()).unwrap(),
    ])));
    if let Some((cert, key)) = client {
        tls = tls.client_cert(Some(ClientCert::new_with_certs(
            &[Certificate::from_pem(cert.as_bytes()).unwrap()],
            PrivateKey::from_pem(key.as_bytes()).unwrap(),
        )));
    }
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(server::CLIENT_TIMEOUT))
        .tls_config(tls.build())
        .build()
        .into()
}

fn https(s: &Server, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", s.addr.port())
}

/// `GET /health` through `agent`: its status, or the error (a failed handshake).
fn health(agent: &ureq::Agent, s: &Server) -> Result<u16, ureq::Error> {
    agent
        .get(https(s, "/health"))
        .call()
        .map(|r| r.status().as_u16())
}

#[test]
fn a_tls_server_serves_the_api_and_answers_plain_http_with_a_clear_400() {
    let ours = pki("a");
    let files = Files::new(&ours);
    let s = serve(Arc::new(Tls::load(files.tls(false)).unwrap()));
    let agent = client(&ours.ca, None);
    let put = agent
        .put(https(&s, "/kv/greeting"))
        .send_json(serde_json::json!({"value": "hello"}))
        .unwrap();
    assert_eq!(put.status().as_u16(), 200);
    let mut got = agent.get(https(&s, "/kv/greeting")).call().unwrap();
    assert_eq!(got.status().as_u16(), 200);
    let body: serde_json::Value = got.body_mut().read_json().unwrap();
    assert_eq!(body["value"], "hello");
    // Plain HTTP on the TLS port: a 400 in the usual JSON shape, saying what to do.
    let (status, body) = s.get("/kv/greeting");
    server::assert_error(&(status, body.clone()), 400);
    assert!(
        body["message"].as_str().unwrap().contains("https"),
        "{body}"
    );
    // A client that does not trust the CA fails its handshake (and the server goes on).
    let stranger = client(&pki("b").ca, None);
    assert!(health(&stranger, &s).is_err());
    assert_eq!(health(&agent, &s).unwrap(), 200);
}

#[test]
fn mutual_tls_lets_in_only_clients_with_a_certificate_from_the_ca() {
    let ours = pki("m");
    let files = Files::new(&ours);
    let s = serve(Arc::new(Tls::load(files.tls(true)).unwrap()));
    let without = client(&ours.ca, None);
    assert!(
        health(&without, &s).is_err(),
        "a client without a certificate got in"
    );
    let other = pki("other");
    let wrong = client(&ours.ca, Some((&other.client_cert, &other.client_key)));
    assert!(
        health(&wrong, &s).is_err(),
        "a client certificate from another CA got in"
    );
    let with = client(&ours.ca, Some((&ours.client_cert, &ours.client_key)));
    assert_eq!(health(&with, &s).unwrap(), 200);
}

#[test]
fn a_reload_swaps_the_certificate_and_bad_files_keep_the_old_one() {
    let first = pki("first");
    let files = Files::new(&first);
    let tls = Arc::new(Tls::load(files.tls(false)).unwrap());
    let s = serve(tls.clone());
    let trusts_first = client(&first.ca, None);
    assert_eq!(health(&trusts_first, &s).unwrap(), 200);
    // A key that does not match the certificate: refused, the old certificate stays.
    let second = pki("second");
    std::fs::write(files.path("server.pem"), &second.server_cert).unwrap();
    let err = tls.reload().unwrap_err();
    assert!(err.contains("do not make a certificate"), "{err}");
    let fresh_first = client(&first.ca, None); // a new connection
    assert_eq!(health(&fresh_first, &s).unwrap(), 200);
    // The whole new pair: new connections get the new certificate.
    files.write(&second);
    tls.reload().unwrap();
    let trusts_second = client(&second.ca, None);
    assert_eq!(health(&trusts_second, &s).unwrap(), 200);
    assert!(health(&client(&first.ca, None), &s).is_err());
}

#[test]
fn unreadable_or_mismatched_files_are_refused_with_the_reason() {
    let ours = pki("r");
    let files = Files::new(&ours);
    let missing = TlsFiles {
        cert: files.path("nope.pem"),
        ..files.tls(false)
    };
    assert!(Tls::load(missing)
        .unwrap_err()
        .contains("cannot read the TLS certificate"));
    std::fs::write(files.path("empty.pem"), "").unwrap();
    let empty = TlsFiles {
        cert: files.path("empty.pem"),
        ..files.tls(false)
    };
    assert!(Tls::load(empty)
        .unwrap_err()
        .contains("holds no certificate"));
    let no_key = TlsFiles {
        key: files.path("ca.pem"),
        ..files.tls(false)
    };
    assert!(Tls::load(no_key).unwrap_err().contains("TLS key file"));
}
