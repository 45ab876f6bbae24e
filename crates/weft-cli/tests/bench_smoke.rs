//! Every script in `bench/` in its smoke mode (`--smoke`): each step once, for about a
//! second, at tiny sizes, with this build's `weft` and examples. No figure is asserted —
//! these binaries are unoptimised and share the machine with the other tests — but a
//! script that errors, sees a failed request, or moves nothing fails here, so a benchmark
//! can no longer rot unnoticed when a default changes (bench/control.py did: the server's
//! TLS and ACLs went on by default and it broke without a test noticing).
//!
//! Needs what the benchmarks need (nginx, haproxy, wrk, h2load, valgrind, openssl,
//! taskset, chromium + playwright-core): scripts/install-test-deps installs it all.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

/// weft-control's example `name` from this build (`cargo test` builds the workspace's
/// examples; a lone `cargo test -p weft-cli` may not have, so build it then).
fn example(name: &str) -> PathBuf {
    let path = weft()
        .parent()
        .expect("target dir")
        .join("examples")
        .join(name);
    if !path.is_file() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "weft-control", "--example", name])
            .current_dir(root())
            .status()
            .expect("cargo");
        assert!(status.success(), "building example {name}");
    }
    path
}

/// Runs `bench/SCRIPT --smoke --weft WEFT [--load LOAD]`; fails with its output unless
/// it succeeds and prints `expect` (what the script prints once its smoke run went through).
fn smoke(script: &str, load: Option<&Path>, expect: &str) {
    let mut cmd = Command::new("python3");
    cmd.arg(root().join("bench").join(script))
        .args(["--smoke", "--weft"])
        .arg(weft())
        .current_dir(root());
    if let Some(load) = load {
        cmd.arg("--load").arg(load);
    }
    let out = cmd.output().expect("python3");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains(expect),
        "bench/{script} --smoke failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}

#[test]
fn the_proxy_benchmark_runs() {
    smoke("run.py", None, "smoke run ok");
}

#[test]
fn the_mesh_hop_benchmark_runs() {
    smoke("mesh.py", None, "smoke run ok");
}

#[test]
fn the_tls_benchmark_runs() {
    smoke("tls.py", None, "smoke run ok");
}

#[test]
fn the_control_plane_benchmark_runs_against_the_defaults() {
    let load = example("discovery_load");
    smoke("control.py", Some(&load), "smoke run ok");
}

#[test]
fn the_ui_benchmark_runs() {
    let load = example("live_load");
    smoke("ui.py", Some(&load), "interactive_median_ms");
}
