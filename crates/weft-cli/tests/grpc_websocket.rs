//! End to end with real protocol peers: a grpcio server and client, a websockets server and
//! client, talking through `weft proxy`.

use std::path::PathBuf;
use std::process::Command;

use weft_testkit::{one_service_config, proxy, python, Proc};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

fn peer(script: &str) -> Proc {
    let mut c = Command::new(python());
    c.arg(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/support")
            .join(script),
    )
    .arg("server");
    Proc::spawn(c)
}

fn run_client(script: &str, target: &str) -> serde_json::Value {
    let out = Command::new(python())
        .arg(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/support")
                .join(script),
        )
        .args(["client", target])
        .output()
        .expect("run client");
    assert!(
        out.status.success(),
        "{script} client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn config(protocol: &str, upstream: &str) -> String {
    one_service_config(
        "up",
        &format!("  protocol: {protocol}\n  endpoints: [{{address: \"{upstream}\"}}]\n"),
    )
}

#[test]
fn grpc_unary_streaming_trailers_and_status_pass_through() {
    let server = peer("grpc_peer.py");
    let upstream = server.ready["address"].as_str().unwrap();
    let p = proxy(&weft(), &config("grpc", upstream), &[]);
    let r = run_client("grpc_peer.py", &p.listener("gw/web").to_string());
    assert_eq!(r["unary"], "echo:hi");
    assert_eq!(r["trailer"], "t1", "trailing metadata lost: {r}");
    assert_eq!(r["error_code"], "NOT_FOUND", "grpc-status lost: {r}");
    assert_eq!(r["error_details"], "no such thing");
    let stream = r["server_stream"].as_array().unwrap();
    assert_eq!(stream.len(), 500);
    assert_eq!(stream[499], "m499");
    assert_eq!(r["client_stream"], "200000");
    assert_eq!(r["bidi"], serde_json::json!(["A", "BC", "DEF"]));
    let m = p.admin_get("/metrics");
    assert!(
        weft_testkit::metric_value(&m, "weft_requests_total{listener=\"gw/web\",route=\"r\",service=\"up\",status_class=\"2xx\"}") == Some(5.0),
        "five gRPC calls (errors travel as HTTP 200 + grpc-status): {m}"
    );
}

#[test]
fn websocket_upgrade_is_proxied() {
    let server = peer("ws_peer.py");
    let upstream = server.ready["address"].as_str().unwrap();
    let p = proxy(&weft(), &config("http", upstream), &[]);
    let r = run_client("ws_peer.py", &format!("ws://{}/chat", p.listener("gw/web")));
    let texts = r["texts"].as_array().unwrap();
    assert_eq!(texts.len(), 100);
    assert_eq!(texts[42], "msg-42");
    assert_eq!(r["binary_ok"], true);
}

#[test]
fn websocket_to_an_http2_service_is_refused_clearly() {
    let server = peer("ws_peer.py");
    let upstream = server.ready["address"].as_str().unwrap();
    let p = proxy(&weft(), &config("http2", upstream), &[]);
    let r = weft_testkit::curl(&[
        "-H",
        "connection: upgrade",
        "-H",
        "upgrade: websocket",
        "-H",
        "sec-websocket-version: 13",
        "-H",
        "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
        &format!("http://{}/chat", p.listener("gw/web")),
    ]);
    assert_eq!(
        (r.status, r.header("x-weft-error")),
        (501, Some("upgrade-unsupported")),
        "{r:?}"
    );
}
