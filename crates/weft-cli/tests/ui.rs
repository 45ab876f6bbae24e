//! The web UI in a real browser: `weft server` with TLS and ACLs on, payments and
//! inventory behind their sidecars, frontend's sidecar calling both several times a
//! second; then Debian's Chromium, driven by playwright-core (both installed by
//! scripts/install-test-deps), signs in and checks what docs/ui.md promises
//! (tests/ui/browser.cjs holds the browser's steps). Loopback only.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weft_testkit::mesh::{apply_file, http, server, server_with, sidecar, token_for, weft_cli};
use weft_testkit::{echo, eventually, require};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

/// playwright-core as scripts/install-test-deps installs it.
fn playwright() -> PathBuf {
    let dir = std::env::var_os("WEFT_NODE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/weft/node")
        })
        .join("node_modules/playwright-core");
    assert!(
        dir.join("package.json").is_file(),
        "playwright-core is not installed in {}: run scripts/install-test-deps",
        dir.display()
    );
    dir
}

/// Stops the traffic when dropped.
struct Traffic(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);

impl Drop for Traffic {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        if let Some(t) = self.1.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn the_ui_shows_the_live_mesh_and_respects_the_token() {
    let node = require("node");
    let chromium = require("chromium");
    let playwright = playwright();

    let server = server_with(&weft(), &["--tls", "on"]);
    let url = server.url();
    apply_file(
        &weft(),
        &server,
        "kind: Intention\nmetadata: {name: frontend-to-payments}\nspec: {source: frontend, destination: payments, action: allow}\n\
         ---\nkind: Intention\nmetadata: {name: frontend-to-inventory}\nspec: {source: frontend, destination: inventory, action: allow}\n\
         ---\nkind: Service\nmetadata: {name: payments}\nspec: {}\n\
         ---\nkind: HTTPRoute\nmetadata: {name: payments-route}\nspec: {parentRefs: [{kind: Service, name: payments}], rules: [{backendRefs: [{name: payments, weight: 100}]}]}\n\
         ---\nkind: Service\nmetadata: {name: inventory}\nspec: {subsets: {stable: {version: v1}, canary: {version: v1}}}\n\
         ---\nkind: Canary\nmetadata: {name: inventory}\nspec: {service: inventory, stable: stable, canary: canary, weights: [50, 100], analysis: {interval: 10s, successRate: 0.9, minRequests: 5}}\n",
        &[],
    );
    let pay_app = echo(&weft(), "payments-1", &[]);
    let inv_app = echo(&weft(), "inventory-1", &[]);
    let fe_app = echo(&weft(), "frontend-1", &[]);
    let payments = sidecar(
        &weft(),
        &url,
        "payments",
        "payments-1",
        pay_app.addr,
        &["--metadata", "version=v1"],
    );
    let inventory = sidecar(
        &weft(),
        &url,
        "inventory",
        "inventory-1",
        inv_app.addr,
        &["--metadata", "version=v1"],
    );
    let frontend = sidecar(
        &weft(),
        &url,
        "frontend",
        "frontend-1",
        fe_app.addr,
        &[
            "--upstream",
            "payments=127.0.0.1:0",
            "--upstream",
            "inventory=127.0.0.1:0",
        ],
    );
    for s in [&payments, &inventory, &frontend] {
        s.wait_synced();
    }
    let outs = [
        frontend.listener("out-payments"),
        frontend.listener("out-inventory"),
    ];
    for out in outs {
        eventually("the callee answers", Duration::from_secs(20), || {
            matches!(http(out, "GET", "/warm", b""), Ok((200, _))).then_some(())
        });
    }
    // Frontend's app at work: ten requests a second to each callee while the browser
    // looks; one in four of payments' answers 500 (a failing edge).
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        Traffic(
            stop.clone(),
            Some(std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < 20_000 {
                    let failing = if n % 4 == 0 { "/status/500" } else { "/order" };
                    let _ = http(outs[0], "GET", failing, b"");
                    let _ = http(outs[1], "GET", &format!("/order/{n}"), b"");
                    n += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
            })),
        )
    };

    let (ok, out, err) = weft_cli(
        &weft(),
        &[
            "acl",
            "create",
            "--server",
            &url,
            "--description",
            "read-only viewer",
            "--rule",
            "operator:read",
            "--rule",
            "intentions:read",
        ],
    );
    assert!(ok, "{out}{err}");
    let readonly = out
        .lines()
        .find_map(|l| l.strip_prefix("secret:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no secret in {out}"));
    let token = token_for(&url).expect("the management token");

    let out_dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ui-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).expect("output directory");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ui/browser.cjs");
    let mut cmd = Command::new(node);
    cmd.arg(&script)
        .env("WEFT_URL", &url)
        .env("WEFT_TOKEN", &token)
        .env("WEFT_READONLY_TOKEN", &readonly)
        .env("WEFT_PLAYWRIGHT", &playwright)
        .env("WEFT_CHROMIUM", &chromium)
        .env("WEFT_UI_OUT", &out_dir);
    let result = cmd.output().expect("node runs");
    drop(traffic);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    println!("{said}");
    assert!(
        result.status.success(),
        "the browser's steps failed (screenshots in {}):\n{said}",
        out_dir.display()
    );
    assert_eq!(
        said.lines().filter(|l| l.starts_with("ok: ")).count(),
        7,
        "every step ran: {said}"
    );
}

/// `weft acl create` with the management token: (accessor, secret).
fn create_token(url: &str, rules: &[&str]) -> (String, String) {
    let mut args = vec!["acl", "create", "--server", url];
    for r in rules {
        args.extend(["--rule", r]);
    }
    let (ok, out, err) = weft_cli(&weft(), &args);
    assert!(ok, "{out}{err}");
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    };
    (field("accessor:"), field("secret:"))
}

/// The UI's live picture is a stream the server keeps pushing: it checks the token
/// again before every push, so revoking the token ends an open page's stream (with a
/// reason) instead of leaving it to watch the mesh forever.
#[test]
fn a_topology_stream_ends_with_a_reason_when_its_token_is_revoked() {
    use std::io::{BufRead, BufReader};
    let s = server(&weft());
    let url = s.url();
    let (accessor, secret) = create_token(&url, &["operator:read"]);
    let mut curl = Command::new(require("curl"))
        .args(["-sN", "-H", &format!("Authorization: Bearer {secret}")])
        .arg(format!("{url}/v1/topology/stream?window=10s"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = curl.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
        let _ = tx.send("(end of stream)".into());
    });
    let next = |what: &str| -> String {
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(15))
                .unwrap_or_else(|_| panic!("no {what} within 15 s"));
            if line.starts_with("event: ") || line == "(end of stream)" {
                return line;
            }
        }
    };
    assert_eq!(next("first topology"), "event: topology");
    assert_eq!(next("second topology"), "event: topology");
    let (ok, out, err) = weft_cli(&weft(), &["acl", "revoke", &accessor, "--server", &url]);
    assert!(ok, "{out}{err}");
    let mut seen = next("the refusal");
    while seen == "event: topology" {
        seen = next("the refusal"); // one push may have been under way
    }
    assert_eq!(seen, "event: denied");
    assert_eq!(next("the end"), "(end of stream)");
    let _ = curl.wait();
}
