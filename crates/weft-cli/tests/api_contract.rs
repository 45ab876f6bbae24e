//! The control plane's API against its own OpenAPI document, fuzzed by schemathesis (from
//! PyPI, installed by scripts/install-test-deps) against a real `weft server` with TLS
//! and ACLs on and a management token: no 5xx, every status, content type, header and
//! body as documented (errors JSON with a code), documented inputs accepted, missing
//! tokens refused, undocumented methods answered 405 with `Allow`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use weft_testkit::mesh::{server_with, token_for};
use weft_testkit::{temp_dir, venv_tool};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

/// Every check on, with two exceptions kept as narrow as they can be:
/// * `negative_data_rejection`: the document describes portable inputs (e.g. KV keys
///   of plain segments) and the server accepts more; a generated client never sends
///   what the document excludes, so leniency is not a broken contract;
/// * `positive_data_acceptance` on `POST /v1/config` and `POST /v1/ca/sign`: their
///   bodies (YAML resources, a PKCS#10 request) cannot be described by a JSON schema, so
///   most generated bodies are rightly refused.
///
/// Long-polls are given a 50 ms `wait` so a run is bounded by its example count.
const CONFIG: &str = r#"
[parameters]
"query.wait" = "50ms"

[checks]
negative_data_rejection.enabled = false

[[operations]]
include-path = "/v1/config"
include-method = "POST"
checks.positive_data_acceptance.enabled = false

[[operations]]
include-path = "/v1/ca/sign"
checks.positive_data_acceptance.enabled = false
"#;

#[test]
fn the_api_keeps_its_openapi_contract_under_a_fuzzer() {
    let st = venv_tool("st");
    let s = server_with(&weft(), &["--tls", "on"]);
    let token = token_for(&s.url()).expect("the management token");
    let ca = s.ca_file.as_ref().expect("TLS on: a CA file");
    let dir = temp_dir();
    std::fs::write(dir.join("schemathesis.toml"), CONFIG).expect("config");
    let started = Instant::now();
    let mut child = Command::new(st)
        .current_dir(&dir)
        .arg("--config-file")
        .arg(dir.join("schemathesis.toml"))
        .args(["run", &format!("{}/v1/openapi.json", s.url())])
        .args(["--header", &format!("X-Weft-Token: {token}")])
        .arg("--tls-verify")
        .arg(ca)
        // Bounded: examples per operation and a fixed seed (about 1,200 requests).
        .args(["--max-examples", "12", "--seed", "20261204"])
        .args(["--request-timeout", "10", "--no-color"])
        // Rotating the CA and the one-time bootstrap have tests of their own; so does
        // the tap and the topology stream, event streams that last as long as their
        // client (every accepted case would run into the request timeout).
        .args([
            "--exclude-path",
            "/v1/ca/rotate",
            "--exclude-path",
            "/v1/acl/bootstrap",
            "--exclude-path",
            "/v1/tap/{service}",
            "--exclude-path",
            "/v1/topology/stream",
        ])
        .stdout(std::fs::File::create(dir.join("report.txt")).expect("report file"))
        .stderr(std::fs::File::create(dir.join("errors.txt")).expect("errors file"))
        .spawn()
        .expect("run schemathesis");
    // And bounded in time: a run that hangs is killed (it takes ~20 s here).
    let limit = std::time::Duration::from_secs(600);
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let status = child.wait().expect("schemathesis exit");
    let report = std::fs::read_to_string(dir.join("report.txt")).unwrap_or_default();
    assert!(
        status.success(),
        "schemathesis found contract violations ({:?}):\n{report}\n{}",
        started.elapsed(),
        std::fs::read_to_string(dir.join("errors.txt")).unwrap_or_default()
    );
    // It really ran: every phase over the 32 operations, and it generated cases.
    assert!(report.contains("Tested: 32"), "{report}");
    assert!(
        report.contains("✅ Fuzzing") && report.contains("✅ Coverage"),
        "{report}"
    );
}
