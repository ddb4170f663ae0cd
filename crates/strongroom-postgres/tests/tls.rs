//! TLS to a real server with certificates made for the test (openssl): `verify-full` against
//! the right and a wrong root certificate, `require`, a server that refuses plain connections,
//! and a user authenticated by a client certificate.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::process::Command;

use strongroom_postgres::{PgConfig, PgEngine};
use strongroom_store::{Engine, EngineErrorKind, TreeId};
use strongroom_test_support::pg::{PgServer, ServerOptions};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is needed by the TLS tests (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and localhost, a client certificate for `certuser`,
/// and a second CA that signed nothing the server presents.
fn certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let (key, crt, subj) = (
            format!("{ca}.key"),
            format!("{ca}.crt"),
            format!("/CN=strongroom test {ca}"),
        );
        let mut a = vec!["req", "-x509"];
        a.extend(ec);
        a.extend(["-keyout", &key, "-out", &crt, "-days", "2", "-subj", &subj]);
        openssl(dir, &a);
    }
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    // (An extension makes a version 3 certificate, which is all webpki accepts.)
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn) in [("server", "localhost"), ("client", "certuser")] {
        let mut a = vec!["req".to_owned()];
        a.extend(ec.iter().map(|s| (*s).to_owned()));
        a.extend(
            [
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ]
            .map(String::from),
        );
        openssl(dir, &a.iter().map(String::as_str).collect::<Vec<_>>());
        let mut a: Vec<String> = [
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
        ]
        .map(String::from)
        .to_vec();
        a.extend(["-extfile".to_owned(), format!("{name}.ext")]);
        openssl(dir, &a.iter().map(String::as_str).collect::<Vec<_>>());
    }
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        dir.join("client.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
}

struct TlsServer {
    server: PgServer,
    certs: tempfile::TempDir,
}

impl TlsServer {
    fn start() -> Self {
        let certs = tempfile::tempdir().unwrap();
        certificates(certs.path());
        let read = |f: &str| std::fs::read(certs.path().join(f)).unwrap();
        let server = PgServer::start_with(&ServerOptions {
            conf: vec![
                "ssl = on".into(),
                "ssl_cert_file = 'server.crt'".into(),
                "ssl_key_file = 'server.key'".into(),
                "ssl_ca_file = 'ca.crt'".into(),
            ],
            hba: vec![
                "hostssl all certuser 127.0.0.1/32 cert".into(),
                "hostnossl all all 127.0.0.1/32 reject".into(),
            ],
            files: vec![
                ("server.crt".into(), read("server.crt")),
                ("server.key".into(), read("server.key")),
                ("ca.crt".into(), read("ca.crt")),
            ],
        });
        let _ = server.psql("CREATE ROLE certuser LOGIN SUPERUSER");
        Self { server, certs }
    }

    fn cert(&self, f: &str) -> String {
        self.certs.path().join(f).display().to_string()
    }

    /// The server's URL with `params` instead of `sslmode=disable`.
    fn url(&self, params: &str) -> String {
        self.server.url().replace("sslmode=disable", params)
    }
}

#[test]
fn tls_modes_and_client_certificates_on_a_real_server() {
    let s = TlsServer::start();
    let schema = |c: PgConfig, n: &str| c.with_schema(n).unwrap();

    // verify-full with the CA that signed the server's certificate: encrypted, and the server
    // says so about this very connection.
    let ok = PgConfig::from_url(&s.url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        s.cert("ca.crt")
    )))
    .unwrap();
    let e = PgEngine::connect(&schema(ok, "a")).unwrap();
    e.insert(TreeId::Records, b"k", b"v").unwrap();
    assert!(
        e.tls_in_use()
            .unwrap()
            .is_some_and(|v| v.starts_with("TLS")),
        "{:?}",
        e.tls_in_use()
    );
    drop(e);

    // verify-full with another CA: refused, saying why, before any statement.
    let wrong = PgConfig::from_url(&s.url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        s.cert("other-ca.crt")
    )))
    .unwrap();
    let err = PgEngine::connect(&schema(wrong, "b")).unwrap_err();
    let text = err.to_string().to_lowercase();
    assert!(
        text.contains("certificate") || text.contains("unknownissuer") || text.contains("issuer"),
        "{err}"
    );

    // verify-full without a root certificate: a configuration error that says what to add.
    let none = PgConfig::from_url(&s.url("sslmode=verify-full")).unwrap();
    let err = PgEngine::connect(&schema(none, "c")).unwrap_err();
    assert_eq!(err.kind(), EngineErrorKind::Refused);
    assert!(err.to_string().contains("sslrootcert"), "{err}");

    // require: encrypted without checking the certificate.
    let req = PgConfig::from_url(&s.url("sslmode=require")).unwrap();
    let e = PgEngine::connect(&schema(req, "d")).unwrap();
    assert!(e.tls_in_use().unwrap().is_some());
    drop(e);

    // A plain connection to a server that refuses them: a clear refusal.
    let plain = PgConfig::from_url(&s.url("sslmode=disable")).unwrap();
    let err = PgEngine::connect(&schema(plain, "e")).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            EngineErrorKind::Refused | EngineErrorKind::Other
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("pg_hba") || err.to_string().contains("refused"),
        "{err}"
    );
    assert!(!err.to_string().contains(s.server.password()), "{err}");

    // A user authenticated by its client certificate (no password in the URL at all).
    let url = format!(
        "postgres://certuser@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        s.server.port(),
        s.cert("ca.crt"),
        s.cert("client.crt"),
        s.cert("client.key")
    );
    let e = PgEngine::connect(&schema(PgConfig::from_url(&url).unwrap(), "f")).unwrap();
    e.insert(TreeId::Records, b"k", b"by certificate").unwrap();
    drop(e);
    // The same user without its certificate is refused.
    let url = format!(
        "postgres://certuser@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}",
        s.server.port(),
        s.cert("ca.crt")
    );
    assert!(PgEngine::connect(&schema(PgConfig::from_url(&url).unwrap(), "g")).is_err());
    // A client key other users can read is refused, as libpq refuses it.
    use std::os::unix::fs::PermissionsExt as _;
    let loose = s.certs.path().join("loose.key");
    std::fs::copy(s.certs.path().join("client.key"), &loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let url = format!(
        "postgres://certuser@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        s.server.port(),
        s.cert("ca.crt"),
        s.cert("client.crt"),
        loose.display()
    );
    let err = PgEngine::connect(&PgConfig::from_url(&url).unwrap()).unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
    // A key without its certificate is a configuration error.
    let url = format!(
        "{}&sslkey={}",
        s.url("sslmode=require"),
        s.cert("client.key")
    );
    let err = PgEngine::connect(&PgConfig::from_url(&url).unwrap()).unwrap_err();
    assert!(err.to_string().contains("sslcert"), "{err}");
}
