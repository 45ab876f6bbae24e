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

use weft_testkit::mesh::{apply_file, http, server_with, sidecar, token_for, weft_cli};
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
         ---\nkind: Intention\nmetadata: {name: frontend-to-inventory}\nspec: {source: frontend, destination: inventory, action: allow}\n",
        &[],
    );
    let pay_app = echo(&weft(), "payments-1", &[]);
    let inv_app = echo(&weft(), "inventory-1", &[]);
    let fe_app = echo(&weft(), "frontend-1", &[]);
    let payments = sidecar(&weft(), &url, "payments", "payments-1", pay_app.addr, &[]);
    let inventory = sidecar(&weft(), &url, "inventory", "inventory-1", inv_app.addr, &[]);
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
    // Frontend's app at work: ten requests a second to each callee while the browser looks.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        Traffic(
            stop.clone(),
            Some(std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < 20_000 {
                    for out in outs {
                        let _ = http(out, "GET", &format!("/order/{n}"), b"");
                    }
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
        6,
        "every step ran: {said}"
    );
}
