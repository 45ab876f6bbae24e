//! End to end: `weft demo` runs a local mesh (control plane, sidecars) and serves HTTP and
//! an HTTPS edge whose self-signed certificate is made at start, and stops cleanly on
//! Ctrl-C (SIGINT).

use std::path::PathBuf;
use std::time::Duration;

use weft_testkit::{curl, Proc};

#[test]
fn demo_serves_http_and_https_and_stops_on_ctrl_c() {
    let mut cmd = std::process::Command::new(PathBuf::from(env!("CARGO_BIN_EXE_weft")));
    cmd.args([
        "demo",
        "--port",
        "0",
        "--tls-port",
        "0",
        "--server-port",
        "0",
    ]);
    let mut demo = Proc::spawn(cmd);
    let ready = demo.ready.clone();
    let http = ready["listeners"]["demo/web"]
        .as_str()
        .expect("http listener");
    let https = ready["listeners"]["demo/https"]
        .as_str()
        .expect("https listener");
    let ca = ready["ca"].as_str().expect("certificate path");

    let r = curl(&[&format!("http://{http}/hello")]);
    assert_eq!(r.status, 200, "{r:?}");
    let port = https.rsplit_once(':').expect("port").1;
    let r = curl(&[
        "--cacert",
        ca,
        "-w",
        "\n%{http_version}",
        &format!("https://localhost:{port}/hello"),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.ends_with("\n2"), "HTTP/2 by ALPN: {}", r.body);
    // The live window the demo's hints point at counts those requests.
    let admin = ready["admin"].as_str().expect("admin address");
    let stats = curl(&[&format!("http://{admin}/stats?window=1m")]).json();
    let served: u64 = stats["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .filter(|r| r["route"] == "demo")
        .map(|r| r["requests"].as_u64().unwrap_or(0))
        .sum();
    assert!(served >= 2, "{stats:#}");

    // The mesh: frontend's sidecar reaches payments and inventory, found in the catalog.
    for (service, instances) in [
        ("payments", vec!["payments-1"]),
        ("inventory", vec!["inventory-1", "inventory-2"]),
    ] {
        let out = ready["mesh"]["upstreams"][service]
            .as_str()
            .expect("outbound listener");
        // Registration is asynchronous: wait for the first answer.
        let r = weft_testkit::eventually("the mesh answers", Duration::from_secs(15), || {
            let r = curl(&[&format!("http://{out}/order")]);
            (r.status == 200).then_some(r)
        });
        let name = r.json()["name"].as_str().unwrap_or_default().to_string();
        assert!(
            instances.contains(&name.as_str()),
            "{service} answered by {name}"
        );
    }
    let server = ready["mesh"]["server"].as_str().expect("server url");
    let token = ready["mesh"]["token"].as_str().expect("management token");
    let mesh_ca = ready["mesh"]["caFile"].as_str().expect("CA file");
    assert!(
        server.starts_with("https://"),
        "the demo's API is TLS: {server}"
    );
    // The canary split the demo suggests applies, and sends some payments calls to v2.
    let split = std::path::Path::new(ca).with_file_name("payments-split.yaml");
    let weft = PathBuf::from(env!("CARGO_BIN_EXE_weft"));
    // `weft ARGS…` against the demo's control plane, as its hints say: server, token, CA.
    let cli = |args: &[&str]| {
        let with = ["--server", server, "--token", token, "--ca-file", mesh_ca];
        weft_testkit::mesh::weft_cli(&weft, &[args, &with[..]].concat())
    };
    let (ok, stdout, stderr) = cli(&["apply", "-f", &split.display().to_string(), "--wait"]);
    assert!(ok, "{stdout}\n{stderr}");
    let payments = ready["mesh"]["upstreams"]["payments"]
        .as_str()
        .expect("payments");
    weft_testkit::eventually(
        "payments-v2 gets canary traffic",
        Duration::from_secs(10),
        || {
            let r = curl(&[&format!("http://{payments}/order")]);
            (r.json()["name"] == "payments-v2-1").then_some(())
        },
    );
    // The canary the hints offer: the control plane takes over payments-by-version.
    let canary = std::path::Path::new(ca).with_file_name("payments-canary.yaml");
    let (ok, stdout, stderr) = cli(&["apply", "-f", &canary.display().to_string()]);
    assert!(ok, "{stdout}\n{stderr}");
    weft_testkit::eventually("the canary's first step", Duration::from_secs(15), || {
        let (ok, stdout, _) = cli(&["canary", "status", "payments", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&stdout).ok()?;
        (ok && v["phase"] == "progressing"
            && v["weight"] == 25
            && v["route"] == "payments-by-version")
            .then_some(())
    });
    let status = cli(&["status"]);
    assert!(
        status.0 && status.1.matches("current").count() >= 5,
        "{}",
        status.1
    );
    // The live views the hints suggest: the sidecars answer, frontend → payments is there.
    let (ok, stdout, stderr) = cli(&["edges", "frontend", "-o", "json"]);
    assert!(ok, "{stdout}\n{stderr}");
    let edges: serde_json::Value = serde_json::from_str(&stdout).expect("edges JSON");
    assert!(
        edges["edges"].as_array().is_some_and(|e| e.iter().any(|x| {
            x["source"] == "frontend" && x["destination"] == "payments" && x["mtls"] == true
        })),
        "{edges:#}"
    );
    // The web UI the hints point to is served on the API's port and TLS.
    assert!(
        demo.stderr()
            .contains(&format!("open {server}/ui/ and paste the token {token}")),
        "{}",
        demo.stderr()
    );
    let ui = curl(&["--cacert", mesh_ca, &format!("{server}/ui/")]);
    assert!(
        ui.status == 200 && ui.body.contains("<title>weft</title>"),
        "{} {}",
        ui.status,
        ui.body
    );
    // The DNS hint runs as printed: inventory's two instances share 127.0.0.1.
    let hint = demo
        .stderr()
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("dig ")
                .filter(|l| l.contains("inventory.service.weft"))
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no dig hint: {}", demo.stderr()));
    let args: Vec<&str> = hint
        .split('#')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let out = std::process::Command::new(weft_testkit::require("dig"))
        .args(&args)
        .output()
        .expect("dig");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "127.0.0.1",
        "dig {hint}"
    );

    demo.signal("INT");
    let status = demo.wait_exit(Duration::from_secs(20)).expect("demo exits");
    assert!(status.success(), "{status:?}\n{}", demo.stderr());
    assert!(
        !std::path::Path::new(ca).exists(),
        "the demo's certificate directory is removed on exit"
    );
}
