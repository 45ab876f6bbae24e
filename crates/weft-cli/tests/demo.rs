//! End to end: `weft demo` serves HTTP and an HTTPS edge whose self-signed certificate is
//! made at start, and stops cleanly on Ctrl-C (SIGINT).

use std::path::PathBuf;
use std::time::Duration;

use weft_testkit::{curl, Proc};

#[test]
fn demo_serves_http_and_https_and_stops_on_ctrl_c() {
    let mut cmd = std::process::Command::new(PathBuf::from(env!("CARGO_BIN_EXE_weft")));
    cmd.args(["demo", "--port", "0", "--tls-port", "0"]);
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

    demo.signal("INT");
    let status = demo.wait_exit(Duration::from_secs(20)).expect("demo exits");
    assert!(status.success(), "{status:?}\n{}", demo.stderr());
    assert!(
        !std::path::Path::new(ca).exists(),
        "the demo's certificate directory is removed on exit"
    );
}
