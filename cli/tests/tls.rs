//! TLS on the router, against the real binary: curl and httpx negotiate h2 (or
//! HTTP/1.1) by ALPN on `--tls-listen`, the plain listener stays, bad TLS
//! clients hurt nobody, the certificate is reloaded from its files without a
//! restart, and a certificate that does not load stops the start.

#[path = "support/cluster.rs"]
mod cluster_support;
#[path = "../../registry/tests/support/redis.rs"]
mod redis_support;
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

/// A self-signed certificate for 127.0.0.1 and localhost, made with the
/// openssl CLI: `<dir>/<name>.crt` and `<dir>/<name>.key`.
fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={name}")])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl CLI (scripts/setup.sh installs it)");
    assert!(out.status.success(), "openssl req: {out:?}");
    (cert, key)
}

/// Copies a certificate pair over the live files the router reads, each
/// through a rename (as a secret mount or `mv` would replace it).
fn install(from: &(PathBuf, PathBuf), to: &(PathBuf, PathBuf)) {
    for (src, dst) in [(&from.1, &to.1), (&from.0, &to.0)] {
        let tmp = dst.with_extension("tmp");
        std::fs::copy(src, &tmp).unwrap();
        std::fs::rename(&tmp, dst).unwrap();
    }
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl (scripts/setup.sh installs it)")
}

/// `curl --cacert ca <extra> url`: the status and HTTP version curl saw.
fn curl_status(ca: &Path, extra: &[&str], url: &str) -> Result<String, String> {
    let mut args = vec!["--cacert", ca.to_str().unwrap(), "-o", "/dev/null"];
    args.extend_from_slice(&["-w", "%{http_code} %{http_version}"]);
    args.extend_from_slice(extra);
    args.push(url);
    let out = curl(&args);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The subject of the certificate a new TLS connection to `addr` gets.
fn served_subject(addr: SocketAddr) -> String {
    let mut s_client = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string()])
        .args(["-servername", "localhost"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client");
    let mut pem = Vec::new();
    s_client
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut pem)
        .unwrap();
    let _ = s_client.wait();
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-subject"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    x509.stdin.take().unwrap().write_all(&pem).unwrap();
    let out = x509.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn tls_flags<'a>(listen: &'a str, cert: &'a Path, key: &'a Path) -> [&'a str; 6] {
    [
        "--tls-listen",
        listen,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]
}

async fn digits(p: &Platform) {
    let client = p.client();
    let digest = upload(&client, p, "examples/digits/model.onnx").await;
    register(
        &client,
        p,
        &digits_definition(&digest, "digits", &json!({})),
    )
    .await;
}

#[tokio::test]
async fn curl_gets_h2_by_alpn_and_http1_on_request_and_the_plain_listener_stays() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(certs.path(), "taskmesh-router");
    let tls = free_addr().to_string();
    let mut p = Platform::start(&[&["--no-examples"][..], &tls_flags(&tls, &cert, &key)].concat());
    let banner = p.wait_for_line("node ", Duration::from_secs(5));
    assert!(
        banner.iter().any(|l| l.contains(&format!("https://{tls}"))),
        "{banner:?}"
    );
    digits(&p).await;

    let healthz = format!(
        "https://127.0.0.1:{}/healthz",
        tls.rsplit(':').next().unwrap()
    );
    assert_eq!(curl_status(&cert, &[], &healthz).unwrap(), "200 2");
    let by_name = format!(
        "https://localhost:{}/healthz",
        tls.rsplit(':').next().unwrap()
    );
    assert_eq!(curl_status(&cert, &[], &by_name).unwrap(), "200 2");
    assert_eq!(
        curl_status(&cert, &["--http1.1"], &healthz).unwrap(),
        "200 1.1"
    );

    // An invoke with the operator key, over h2 and over HTTP/1.1.
    let sample_file = certs.path().join("sample.json");
    std::fs::write(&sample_file, serde_json::to_vec(&sample()).unwrap()).unwrap();
    let invoke = format!("https://{tls}/v1/functions/digits/invoke");
    let auth = format!("authorization: Bearer {}", p.admin_key);
    let data = format!("@{}", sample_file.display());
    for (extra, version) in [(None, "2"), (Some("--http1.1"), "1.1")] {
        let mut args = vec!["--cacert", cert.to_str().unwrap(), "-H", &auth];
        args.extend_from_slice(&["-H", "content-type: application/json"]);
        args.extend_from_slice(&[
            "--data-binary",
            &data,
            "-w",
            "\n%{http_code} %{http_version}",
        ]);
        args.extend(extra);
        args.push(&invoke);
        let out = curl(&args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').expect("curl's -w line");
        assert_eq!(status, format!("200 {version}"), "{text} {out:?}");
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(body.is_object(), "{body}");
    }
    // Without a key: refused, over TLS too.
    let out = curl_status(&cert, &["-X", "POST", "--data-binary", &data], &invoke).unwrap();
    assert_eq!(out, "401 2");

    // A client that does not trust the certificate fails the handshake.
    assert!(curl(&["-o", "/dev/null", &healthz]).status.code() == Some(60));

    // The plain listener still speaks HTTP/1.1 and h2c.
    let plain = p.client().get(&p.router_url("/healthz")).await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.version, http::Version::HTTP_2);
    let plain1 = TestClient::http1().get(&p.router_url("/healthz")).await;
    assert_eq!(plain1.status, 200);
}

#[tokio::test]
async fn httpx_over_http2() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(certs.path(), "taskmesh-router");
    let tls = free_addr().to_string();
    let p = Platform::start(&[&["--no-examples"][..], &tls_flags(&tls, &cert, &key)].concat());
    digits(&p).await;
    let python_path = repo_root().join(".deps/python");
    let script = r#"
import json, ssl, sys
import httpx
url, ca, key, body = sys.argv[1:5]
ctx = ssl.create_default_context(cafile=ca)
with httpx.Client(http2=True, verify=ctx, timeout=30) as c:
    health = c.get(url + "/healthz")
    r = c.post(url + "/v1/functions/digits/invoke",
               content=body, headers={"authorization": "Bearer " + key,
                                      "content-type": "application/json"})
    print(json.dumps({"health": [health.status_code, health.http_version],
                      "invoke": [r.status_code, r.http_version],
                      "body": r.json()}))
"#;
    let out = Command::new("python3")
        .args(["-c", script, &format!("https://{tls}")])
        .arg(&cert)
        .arg(&p.admin_key)
        .arg(serde_json::to_string(&sample()).unwrap())
        .env("PYTHONPATH", &python_path)
        .output()
        .expect("python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named"),
        "httpx is missing from .deps/python: run scripts/setup.sh ({stderr})"
    );
    assert!(out.status.success(), "{stderr}");
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["health"], json!([200, "HTTP/2"]), "{seen}");
    assert_eq!(seen["invoke"], json!([200, "HTTP/2"]), "{seen}");
    assert!(seen["body"].is_object(), "{seen}");
}

#[tokio::test]
async fn bad_tls_clients_do_not_hurt_other_connections() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(certs.path(), "taskmesh-router");
    let tls = free_addr().to_string();
    let p = Platform::start(&[&["--no-examples"][..], &tls_flags(&tls, &cert, &key)].concat());
    digits(&p).await;
    let addr: SocketAddr = tls.parse().unwrap();

    // Plain HTTP to the TLS port: an error, the connection closed.
    let out = curl(&["-o", "/dev/null", &format!("http://{tls}/healthz")]);
    assert!(!out.status.success(), "{out:?}");
    let mut plain = TcpStream::connect(addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("200"),
        "plain HTTP on the TLS port must not be served"
    );

    // Garbage handshakes, half handshakes and silent sockets, held open.
    let mut held = Vec::new();
    for i in 0..60 {
        let mut s = TcpStream::connect(addr).unwrap();
        match i % 3 {
            0 => s
                .write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0x00])
                .unwrap(),
            1 => s.write_all(&[0xde, 0xad, 0xbe, 0xef].repeat(256)).unwrap(),
            _ => {}
        }
        held.push(s);
    }
    // Meanwhile TLS callers and plain callers are served, promptly.
    let invoke = format!("https://{tls}/v1/functions/digits/invoke");
    let auth = format!("authorization: Bearer {}", p.admin_key);
    let body = serde_json::to_string(&sample()).unwrap();
    for _ in 0..5 {
        let started = Instant::now();
        let out = curl(&[
            "--cacert",
            cert.to_str().unwrap(),
            "-H",
            &auth,
            "-H",
            "content-type: application/json",
            "--data-binary",
            &body,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            &invoke,
        ]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200 2", "{out:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let plain = p
            .client()
            .post_json(&p.router_url("/v1/functions/digits/invoke"), &sample())
            .await;
        assert_eq!(plain.status, 200);
    }
    drop(held);
}

/// A `taskmesh up` started here (the tests above go through `Platform`),
/// so that it can be signalled; killed on drop.
struct Up {
    child: Child,
    _data: tempfile::TempDir,
}

impl Up {
    fn start(extra: &[&str]) -> Up {
        let data = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_taskmesh"))
            .args(["up", "--no-examples", "--listen", &free_addr().to_string()])
            .args(["--admin-listen", &free_addr().to_string(), "--data-dir"])
            .arg(data.path())
            .args(extra)
            .current_dir(repo_root())
            .env("TASKMESH_LOG", "info,ort=warn")
            .env_remove("TASKMESH_ADMIN_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start taskmesh");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for line in lines.by_ref() {
            if line.expect("stdout").contains("taskmesh is up") {
                // Keep reading: a closed stdout would fail its next println.
                std::thread::spawn(move || lines.for_each(drop));
                return Up { child, _data: data };
            }
        }
        panic!("taskmesh up exited: {:?}", child.wait());
    }

    fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (at most 10 s) until new connections get the certificate `cn`.
fn wait_for_subject(addr: SocketAddr, cn: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let subject = served_subject(addr);
        if subject.contains(cn) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the router still serves {subject:?}, not {cn}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_certificate_is_reloaded_from_its_files_without_a_restart() {
    let certs = tempfile::tempdir().unwrap();
    let a = self_signed(certs.path(), "taskmesh-a");
    let b = self_signed(certs.path(), "taskmesh-b");
    let c = self_signed(certs.path(), "taskmesh-c");
    let live = (certs.path().join("live.crt"), certs.path().join("live.key"));
    install(&a, &live);
    let tls = free_addr();
    let up = Up::start(&tls_flags(&tls.to_string(), &live.0, &live.1));
    let healthz = format!("https://127.0.0.1:{}/healthz", tls.port());
    assert!(served_subject(tls).contains("CN = taskmesh-a"));
    assert_eq!(curl_status(&a.0, &[], &healthz).unwrap(), "200 2");
    assert!(curl_status(&b.0, &[], &healthz).is_err());

    // New files: new connections get the new certificate within a few seconds.
    let replaced = Instant::now();
    install(&b, &live);
    wait_for_subject(tls, "CN = taskmesh-b");
    eprintln!("reloaded after {:?}", replaced.elapsed());
    assert_eq!(curl_status(&b.0, &[], &healthz).unwrap(), "200 2");
    let old = curl_status(&a.0, &[], &healthz).unwrap_err();
    assert!(old.contains("certificate"), "{old}");

    // A broken certificate file is refused; the current certificate stays.
    std::fs::write(&live.0, b"not a certificate").unwrap();
    std::thread::sleep(router::tls::RELOAD_INTERVAL * 2 + Duration::from_millis(500));
    assert_eq!(curl_status(&b.0, &[], &healthz).unwrap(), "200 2");
    assert!(served_subject(tls).contains("CN = taskmesh-b"));

    // SIGHUP reloads at once, and does not stop the process.
    install(&c, &live);
    up.hangup();
    wait_for_subject(tls, "CN = taskmesh-c");
    assert_eq!(curl_status(&c.0, &[], &healthz).unwrap(), "200 2");
}

/// `taskmesh <args>` that must refuse to start: its stderr.
fn refused(args: &[&str]) -> String {
    let data = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_taskmesh"));
    command
        .args(args)
        .arg("--data-dir")
        .arg(data.path())
        .current_dir(repo_root())
        .env("TASKMESH_CLUSTER_KEY", cluster_support::CLUSTER_KEY)
        .env("TASKMESH_ADMIN_KEY", cluster_support::OPERATOR_KEY)
        .stdin(Stdio::null());
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "{args:?} started");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?} did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    stderr
}

#[test]
fn a_tls_setting_that_cannot_work_stops_the_start_with_a_clear_error() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(certs.path(), "one");
    let (_, other_key) = self_signed(certs.path(), "two");
    let (cert, key, other_key) = (
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
        other_key.to_str().unwrap(),
    );
    let tls = free_addr().to_string();
    let listen = free_addr().to_string();
    let admin = free_addr().to_string();
    for role in ["up", "router"] {
        let base = [role, "--listen", &listen];
        let with = |extra: &[&str]| -> Vec<String> {
            let mut args: Vec<String> = base.iter().map(|s| s.to_string()).collect();
            if role == "up" {
                args.extend(["--no-examples", "--admin-listen", &admin].map(String::from));
            } else {
                // Never reached: the TLS settings are checked before Redis.
                args.extend(["--redis", "redis://127.0.0.1:1/0"].map(String::from));
            }
            args.extend(extra.iter().map(|s| s.to_string()));
            args
        };
        let cases: [(&[&str], &str); 5] = [
            (
                &["--tls-listen", &tls, "--tls-cert", cert],
                "without tls_key",
            ),
            (
                &["--tls-listen", &tls, "--tls-key", key],
                "without tls_cert",
            ),
            (
                &["--tls-cert", cert, "--tls-key", key],
                "without tls_listen",
            ),
            (
                &[
                    "--tls-listen",
                    &tls,
                    "--tls-cert",
                    cert,
                    "--tls-key",
                    other_key,
                ],
                "does not go with the certificate",
            ),
            (
                &[
                    "--tls-listen",
                    &tls,
                    "--tls-cert",
                    "/nonexistent/c.pem",
                    "--tls-key",
                    key,
                ],
                "/nonexistent/c.pem",
            ),
        ];
        for (extra, why) in cases {
            let args = with(extra);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let stderr = refused(&args);
            assert!(stderr.contains(why), "{args:?}: {stderr}");
        }
    }
    // The registry and nodes do not serve TLS: asking them to is refused.
    let stderr = refused(&[
        "node",
        "--listen",
        &listen,
        "--redis",
        "redis://127.0.0.1:1/0",
        "--tls-listen",
        &tls,
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ]);
    assert!(stderr.contains("are for `taskmesh router`"), "{stderr}");
}

#[tokio::test]
async fn a_cluster_router_serves_tls_too() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(certs.path(), "taskmesh-cluster");
    let mut cluster = cluster_support::Cluster::start(1, 0);
    let tls = free_addr().to_string();
    let router = cluster.spawn_router(None, &tls_flags(&tls, &cert, &key));
    cluster_support::wait_healthy(&router);
    cluster.routers.push(router);
    cluster.wait_for_nodes(1, Duration::from_secs(30)).await;
    let digest = cluster.upload_digits().await;
    cluster.digits(&digest, "digits", json!({})).await;

    let invoke = format!("https://{tls}/v1/functions/digits/invoke");
    let auth = format!("authorization: Bearer {}", cluster_support::OPERATOR_KEY);
    let body = serde_json::to_string(&sample()).unwrap();
    let out = curl(&[
        "--cacert",
        cert.to_str().unwrap(),
        "-H",
        &auth,
        "-H",
        "content-type: application/json",
        "--data-binary",
        &body,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{http_version}",
        &invoke,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200 2",
        "{out:?} {}",
        cluster.routers[0].logs()
    );
}
