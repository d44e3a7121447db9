//! The CLI as an operator's tool, against a real `taskmesh up`: clients
//! created, listed, rotated and revoked with `taskmesh client`, `--output
//! json` on the read commands, and an exit code for each class of error.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// The result of one `taskmesh` run.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.stdout, self.stderr))
    }

    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "{} {}", self.stdout, self.stderr);
        self
    }
}

/// Runs the CLI against `p` with `key` (unless `args` carry their own).
fn cli(p: &Platform, key: &str, args: &[&str]) -> Run {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_taskmesh"))
        .args(args)
        .current_dir(repo_root())
        .env("TASKMESH_API_KEY", key)
        .env("TASKMESH_ADMIN_URL", p.admin_url(""))
        .env("TASKMESH_ROUTER_URL", p.router_url(""))
        .env_remove("TASKMESH_OUTPUT")
        .output()
        .expect("run taskmesh");
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

const SAMPLE: &str = "@examples/digits/sample.json";

/// Invokes digits with `key` until the exit code is `code` (a revocation
/// reaches the router's key cache within about a second).
fn invoke_until(p: &Platform, key: &str, code: i32) -> Run {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let run = cli(p, key, &["invoke", "digits", "--data", SAMPLE]);
        if run.code == code || Instant::now() > deadline {
            assert_eq!(run.code, code, "{} {}", run.stdout, run.stderr);
            return run;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `client … created` on stderr: its id.
fn created_id(run: &Run) -> String {
    run.stderr
        .split_whitespace()
        .skip_while(|w| *w != "client")
        .nth(1)
        .unwrap_or_else(|| panic!("no client id in {}", run.stderr))
        .to_string()
}

#[tokio::test]
async fn clients_are_created_listed_rotated_and_revoked_from_the_cli() {
    let p = Platform::start(&["--no-examples"]);
    let op = p.admin_key.clone();
    let registered = cli(
        &p,
        &op,
        &["fn", "register", "examples/digits/function.json"],
    )
    .ok();
    assert_eq!(registered.json()["version"], 1, "{}", registered.stdout);

    // The key alone on stdout, so that KEY=$(taskmesh client create …) works.
    let created = cli(&p, &op, &["client", "create", "app", "--scope", "invoke"]).ok();
    let key = created.stdout.trim().to_string();
    assert!(
        !key.is_empty() && !key.contains(char::is_whitespace),
        "{key:?}"
    );
    let id = created_id(&created);
    let acme = cli(
        &p,
        &op,
        &[
            "client",
            "create",
            "acme-admin",
            "--tenant",
            "acme",
            "--scope",
            "admin,invoke",
            "--output",
            "json",
        ],
    )
    .ok()
    .json();
    assert_eq!(acme["tenant"], "acme");
    assert_eq!(acme["scopes"], json!(["admin", "invoke"]));
    let acme_key = acme["api_key"].as_str().unwrap().to_string();

    // The operator lists every tenant's clients; never a key or its hash.
    let listed = cli(&p, &op, &["client", "list"]).ok();
    assert!(
        listed
            .stdout
            .lines()
            .any(|l| l.starts_with(&format!("{id}\tdefault\tapp\tinvoke"))),
        "{}",
        listed.stdout
    );
    assert!(listed.stdout.contains("acme-admin"), "{}", listed.stdout);
    let all = cli(&p, &op, &["client", "list", "--output", "json"]).ok();
    assert!(!all.stdout.contains(&key) && !all.stdout.contains(&acme_key));
    assert!(!all.stdout.contains("hash"), "{}", all.stdout);
    // A tenant's admin sees its tenant's only.
    let mine = cli(&p, &acme_key, &["client", "list", "--output", "json"])
        .ok()
        .json();
    let tenants: Vec<&str> = mine["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, ["acme"]);
    // … and cannot touch another tenant's client: not found.
    assert_eq!(cli(&p, &acme_key, &["client", "revoke", &id]).code, 5);

    invoke_until(&p, &key, 0);
    // Rotation: a new key works, the old one stops.
    let rotated = cli(&p, &op, &["client", "rotate", &id]).ok();
    let new_key = rotated.stdout.trim().to_string();
    assert_ne!(new_key, key);
    assert_eq!(created_id(&rotated), id);
    let refused = invoke_until(&p, &key, 4);
    assert!(
        refused.stdout.contains("unauthenticated"),
        "{}",
        refused.stdout
    );
    invoke_until(&p, &new_key, 0);
    // Revocation: the key stops, the client is gone from the list.
    let revoked = cli(&p, &op, &["client", "revoke", &id]).ok();
    assert!(revoked.stderr.contains("revoked"), "{}", revoked.stderr);
    invoke_until(&p, &new_key, 4);
    assert!(!cli(&p, &op, &["client", "list"]).ok().stdout.contains(&id));
    let again = cli(&p, &op, &["client", "revoke", &id]);
    assert_eq!(again.code, 5, "{}", again.stderr);
    assert!(again.stderr.contains("not_found"), "{}", again.stderr);
}

#[tokio::test]
async fn every_class_of_error_has_its_exit_code() {
    let p = Platform::start(&["--no-examples"]);
    let op = p.admin_key.clone();
    cli(
        &p,
        &op,
        &["fn", "register", "examples/digits/function.json"],
    )
    .ok();

    // Read commands print the server's JSON with --output json.
    let functions = cli(&p, &op, &["fn", "list", "--output", "json"])
        .ok()
        .json();
    assert_eq!(functions["functions"][0]["name"], "digits");
    let text = cli(&p, &op, &["fn", "list"]).ok();
    assert!(
        text.stdout.starts_with("digits\tlatest 1"),
        "{}",
        text.stdout
    );
    let tasks = cli(&p, &op, &["task", "list", "--output", "json"])
        .ok()
        .json();
    assert!(tasks["tasks"].is_array(), "{tasks}");
    let detail = cli(&p, &op, &["fn", "get", "digits", "--version", "1"])
        .ok()
        .json();
    assert_eq!(detail["version"], 1, "{detail}");

    // 3: nothing listens there.
    let (_held, dead) = dead_addr();
    let dead_url = format!("http://{dead}");
    let unreachable = cli(&p, &op, &["fn", "list", "--admin-url", &dead_url]);
    assert_eq!(unreachable.code, 3, "{}", unreachable.stderr);
    assert!(
        unreachable.stderr.contains("cannot reach"),
        "{}",
        unreachable.stderr
    );
    // 4: a wrong key (401), a key without the scope (403).
    let wrong = cli(&p, "tm_wrong", &["fn", "list"]);
    assert_eq!(wrong.code, 4, "{}", wrong.stderr);
    assert!(wrong.stderr.contains("unauthenticated"), "{}", wrong.stderr);
    let invoker = cli(&p, &op, &["client", "create", "app", "--scope", "invoke"]).ok();
    let invoker = invoker.stdout.trim().to_string();
    let forbidden = cli(&p, &invoker, &["client", "list"]);
    assert_eq!(forbidden.code, 4, "{}", forbidden.stderr);
    assert!(
        forbidden.stderr.contains("forbidden"),
        "{}",
        forbidden.stderr
    );
    // 5: no such function, version, task.
    for args in [
        &["fn", "get", "nosuch"][..],
        &["fn", "get", "digits", "--version", "9"],
        &["task", "get", "0123456789abcdef0123456789abcdef"],
        &["invoke", "nosuch", "--data", "{}"],
    ] {
        let run = cli(&p, &op, args);
        assert_eq!(run.code, 5, "{args:?}: {} {}", run.stdout, run.stderr);
    }
    // 6: a definition with a typo, an invalid input.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"name": "x", "model": "sha256:00", "inputz": {}}"#).unwrap();
    let refused = cli(&p, &op, &["fn", "register", bad.to_str().unwrap()]);
    assert_eq!(refused.code, 6, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("invalid_input"),
        "{}",
        refused.stderr
    );
    let invalid = cli(
        &p,
        &op,
        &["invoke", "digits", "--data", r#"{"pixels": "no"}"#],
    );
    assert_eq!(invalid.code, 6, "{}", invalid.stdout);
    assert!(
        invalid.stdout.contains("invalid_input"),
        "{}",
        invalid.stdout
    );
    // 7: a client's own rate limit of one call now and then.
    let slow = cli(
        &p,
        &op,
        &[
            "client",
            "create",
            "slow",
            "--scope",
            "invoke",
            "--rate-per-second",
            "0.01",
            "--burst",
            "1",
        ],
    )
    .ok();
    let slow = slow.stdout.trim().to_string();
    invoke_until(&p, &slow, 0);
    let limited = cli(&p, &slow, &["invoke", "digits", "--data", SAMPLE]);
    assert_eq!(limited.code, 7, "{}", limited.stdout);
    assert!(
        limited.stdout.contains("rate_limited"),
        "{}",
        limited.stdout
    );
    // 2: a usage error (clap's).
    assert_eq!(cli(&p, &op, &["client", "create"]).code, 2);
}

#[tokio::test]
async fn a_server_error_exits_with_its_own_code() {
    // Some functions are placed first on a node that is not there; without
    // retries their calls are 503.
    let (_held, dead) = dead_addr();
    let dead = dead.to_string();
    let p = Platform::start(&["--no-examples", "--extra-node", &dead]);
    let client = p.client();
    let digest = upload(&client, &p, "examples/digits/model.onnx").await;
    let mut unavailable = 0;
    for i in 0..8 {
        let name = format!("g{i}");
        let doc = digits_definition(&digest, &name, &json!({"retry": {"max_attempts": 1}}));
        register(&client, &p, &doc).await;
        let run = cli(&p, &p.admin_key, &["invoke", &name, "--data", SAMPLE]);
        if run.stderr.contains("status 503") {
            assert_eq!(run.code, 8, "{}", run.stdout);
            assert!(run.stdout.contains("unavailable"), "{}", run.stdout);
            unavailable += 1;
        } else {
            assert_eq!(run.code, 0, "{} {}", run.stdout, run.stderr);
        }
    }
    assert!(
        unavailable > 0,
        "no function was placed on the missing node first"
    );
}
