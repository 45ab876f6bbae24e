//! The docs run as written. Code blocks marked ```` ```sh run ```` are run, in order, by
//! bash in a fresh directory (with `examples/` copied in) with this build's `weft` first
//! on the PATH; ```` ```console run ```` blocks are `$ command` lines followed by the
//! output the doc promises (`…` stands for anything), compared with what the command
//! prints. Every `127.0.0.1:PORT` / `localhost:PORT` in them (and in the copied examples)
//! is moved to a free ephemeral port, as the docs say one may. And every YAML example in
//! `docs/` and `examples/` is a valid configuration: checked by `weft validate`, or
//! applied (dry run) to a control plane when it holds mesh resources.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use weft_testkit::mesh::{server, weft_cli};
use weft_testkit::temp_dir;

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One fenced code block: its info string's words, its text, its first line (1-based).
struct Block {
    info: Vec<String>,
    text: String,
    line: usize,
}

/// Every fenced block of a Markdown text (indented fences too; the indent is removed).
fn blocks(md: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let lines: Vec<&str> = md.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            let indent = lines[i].len() - trimmed.len();
            let start = i + 1;
            let mut text = String::new();
            i += 1;
            while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                text.push_str(lines[i].get(indent..).unwrap_or(lines[i].trim_start()));
                text.push('\n');
                i += 1;
            }
            out.push(Block {
                info: info.split_whitespace().map(str::to_string).collect(),
                text,
                line: start,
            });
        }
        i += 1;
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Moves every `127.0.0.1:PORT` and `localhost:PORT` of `text` to the port `ports` maps it
/// to (choosing a free one the first time a port is seen).
fn move_ports(text: &str, ports: &mut BTreeMap<u16, u16>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = ["127.0.0.1:", "localhost:"]
        .iter()
        .filter_map(|h| rest.find(h).map(|i| (i, h.len())))
        .min()
    {
        let (i, len) = at;
        out.push_str(&rest[..i + len]);
        rest = &rest[i + len..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        match rest[..digits].parse::<u16>() {
            Ok(port) if port != 0 && digits >= 2 => {
                let new = *ports.entry(port).or_insert_with(free_port);
                out.push_str(&new.to_string());
                rest = &rest[digits..];
            }
            _ => {}
        }
    }
    out.push_str(rest);
    out
}

/// A bash script running the `run` blocks of `doc` in order.
fn script(doc: &str, ports: &mut BTreeMap<u16, u16>) -> String {
    let md = std::fs::read_to_string(repo().join("docs").join(doc)).expect("read the doc");
    let mut s = String::from(
        r#"set -euo pipefail
# Whatever the doc starts in the background ends with the script, however it ends.
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
trap 'exit 124' TERM INT
# `want OUTPUT EXPECTED WHERE`: OUTPUT matches EXPECTED, where … stands for anything.
want() {
  local out="$1" rest="$2" pat=""
  while [[ "$rest" == *…* ]]; do pat+="$(printf '%q' "${rest%%…*}")*"; rest="${rest#*…}"; done
  pat+="$(printf '%q' "$rest")"
  if ! eval "[[ \"\$out\" == $pat ]]"; then
    printf '%s: the doc promises:\n%s\nbut the command printed:\n%s\n' "$3" "$2" "$1" >&2
    exit 1
  fi
}
"#,
    );
    let mut runnable = 0;
    for b in blocks(&md)
        .into_iter()
        .filter(|b| b.info.iter().any(|w| w == "run"))
    {
        runnable += 1;
        let text = move_ports(&b.text, ports);
        let place = format!("docs/{doc}:{}", b.line);
        match b.info.first().map(String::as_str) {
            Some("sh") => {
                s.push_str(&format!("# {place}\n{text}"));
            }
            Some("console") => {
                // `$ command` then the lines it must print.
                let mut commands: Vec<(String, String, usize)> = Vec::new();
                for (n, line) in text.lines().enumerate() {
                    match line.strip_prefix("$ ") {
                        Some(cmd) => commands.push((cmd.to_string(), String::new(), b.line + n)),
                        None => {
                            let (_, expected, _) =
                                commands.last_mut().expect("output before any `$ command`");
                            expected.push_str(line);
                            expected.push('\n');
                        }
                    }
                }
                for (cmd, expected, line) in commands {
                    s.push_str(&format!(
                        "# docs/{doc}:{line}\nout=$( {{ {cmd}\n}} 2>&1 ) || true\nwant \"$out\" {} 'docs/{doc}:{line}'\n",
                        shell_quote(expected.trim_end_matches('\n'))
                    ));
                }
            }
            other => panic!(
                "docs/{doc}:{}: a run block must be sh or console, not {other:?}",
                b.line
            ),
        }
    }
    assert!(runnable > 0, "docs/{doc} has no runnable block");
    s
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Copies `examples/` into `dir`, ports moved as in the docs.
fn copy_examples(dir: &Path, ports: &mut BTreeMap<u16, u16>) {
    let to = dir.join("examples");
    std::fs::create_dir_all(&to).expect("mkdir");
    for entry in std::fs::read_dir(repo().join("examples")).expect("examples") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            let text = std::fs::read_to_string(&path).expect("read example");
            std::fs::write(
                to.join(path.file_name().expect("name")),
                move_ports(&text, ports),
            )
            .expect("write example");
        }
    }
}

/// Runs the `run` blocks of `doc`; fails with the script's output if any command fails or
/// prints something else than the doc promises.
fn run_doc(doc: &str) {
    let dir = temp_dir();
    let mut ports = BTreeMap::new();
    copy_examples(&dir, &mut ports);
    let text = script(doc, &mut ports);
    std::fs::write(dir.join("run.sh"), &text).expect("write the script");
    let bin = weft();
    let path = format!(
        "{}:{}",
        bin.parent().expect("bin dir").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // `timeout` bounds the run; the script's trap stops what it started in the
    // background, on success, failure or timeout alike.
    let status = Command::new("timeout")
        .args(["--kill-after=10", "180", "bash", "run.sh"])
        .current_dir(&dir)
        .env("PATH", path)
        .env("LC_ALL", "C.UTF-8")
        .env_remove("WEFT_SERVER")
        .env_remove("WEFT_TOKEN")
        .env_remove("WEFT_CA_FILE")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("out.txt")).expect("out"))
        .stderr(std::fs::File::create(dir.join("err.txt")).expect("err"))
        .status()
        .expect("timeout bash run.sh");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    assert!(
        status.success(),
        "docs/{doc} does not run as written ({}):\n--- stderr\n{}\n--- stdout\n{}\n--- script\n{text}",
        if status.code() == Some(124) { "timed out".to_string() } else { format!("{status}") },
        read("err.txt"),
        read("out.txt"),
    );
}

#[test]
fn getting_started_runs_as_written() {
    run_doc("getting-started.md");
}

#[test]
fn the_mesh_quick_start_runs_as_written() {
    run_doc("mesh.md");
}

#[test]
fn the_dns_examples_run_as_written() {
    weft_testkit::require("dig");
    run_doc("dns.md");
}

#[test]
fn the_security_examples_run_as_written() {
    run_doc("security.md");
}

#[test]
fn the_port_mover_moves_every_address_alike() {
    let mut ports = BTreeMap::new();
    let moved = move_ports(
        "a 127.0.0.1:8500 b https://localhost:8500/x c 127.0.0.1:0 d 127.0.0.1:9001,",
        &mut ports,
    );
    let p = ports[&8500];
    let q = ports[&9001];
    assert_eq!(
        moved,
        format!("a 127.0.0.1:{p} b https://localhost:{p}/x c 127.0.0.1:0 d 127.0.0.1:{q},")
    );
}

/// A self-signed certificate and key at `cert` and `key` (for examples that name files).
fn write_certificate(cert: &Path, key: &Path) {
    for p in [cert, key] {
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
    }
    let (c, k) =
        weft_tls::self_signed(&["localhost", "example.com"]).expect("a self-signed certificate");
    std::fs::write(cert, c).expect("write cert");
    std::fs::write(key, k).expect("write key");
}

/// The certificate and key files a configuration names, relative to `dir`, created.
fn provide_files(text: &str, dir: &Path) {
    let value = |line: &str, field: &str| -> Option<String> {
        let at = line.find(&format!("{field}:"))? + field.len() + 1;
        let v = line[at..].trim_start();
        let end = v.find([',', '}', ' ']).unwrap_or(v.len());
        Some(v[..end].trim_matches('"').to_string())
    };
    for line in text.lines() {
        if let (Some(c), Some(k)) = (value(line, "certFile"), value(line, "keyFile")) {
            write_certificate(&dir.join(c), &dir.join(k));
        }
        if let Some(ca) = value(line, "caFile") {
            write_certificate(&dir.join(&ca), &dir.join(format!("{ca}.key")));
        }
    }
}

/// Kinds that only a control plane holds (or shapes that only it accepts).
fn is_mesh(text: &str) -> bool {
    text.contains("kind: Mesh")
        || text.contains("kind: Intention")
        || text.contains("kind: Canary")
        || text.contains("kind: Service, name:")
        || text.contains("kind: Service}")
}

/// Every `.yaml` under `dir`, recursively, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Lines as compared between an excerpt and its whole file: comments and blanks dropped.
fn meaningful_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| {
            let l = l.split(" #").next().unwrap_or_default().trim();
            l.trim_start_matches("- ").to_string()
        })
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

#[test]
fn every_yaml_example_is_a_valid_configuration() {
    let mut examples: Vec<(String, String)> = Vec::new();
    let mut docs: Vec<_> = std::fs::read_dir(repo().join("docs"))
        .expect("docs")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    let mut excerpts = 0;
    for doc in docs {
        let md = std::fs::read_to_string(&doc).expect("read doc");
        let name = doc
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let all = blocks(&md);
        // A block that attaches to a gateway it does not define is checked with the
        // doc's own Gateway example (the configuration reference builds on one).
        let gateways: Vec<&str> = all
            .iter()
            .filter(|b| b.info.first().map(String::as_str) == Some("yaml"))
            .filter(|b| {
                let kinds: Vec<&str> = b
                    .text
                    .lines()
                    .filter_map(|l| l.strip_prefix("kind: "))
                    .collect();
                !kinds.is_empty() && kinds.iter().all(|k| k.trim() == "Gateway")
            })
            .map(|b| b.text.as_str())
            .collect();
        let lines: Vec<&str> = md.lines().collect();
        for b in &all {
            if b.info.first().map(String::as_str) != Some("yaml") {
                continue;
            }
            let place = format!("docs/{name}:{}", b.line);
            if b.info.iter().any(|w| w == "fragment") {
                // An excerpt: if the doc links its whole file just after, it must be in it.
                let end = b.line + b.text.lines().count() + 1;
                let link = lines
                    .iter()
                    .skip(end)
                    .take(3)
                    .find_map(|l| l.split("](../").nth(1).and_then(|r| r.split(')').next()));
                if let Some(file) = link {
                    let whole = std::fs::read_to_string(repo().join(file))
                        .unwrap_or_else(|e| panic!("{place}: links {file}: {e}"));
                    let whole = meaningful_lines(&whole);
                    for line in meaningful_lines(&b.text) {
                        assert!(
                            whole.contains(&line),
                            "{place}: `{line}` is not in {file}, the file it excerpts"
                        );
                    }
                    excerpts += 1;
                }
                continue;
            }
            let mut text = b.text.clone();
            if !text.contains("kind: Gateway") && text.contains("parentRefs: [{name:") {
                for g in &gateways {
                    text.push_str("---\n");
                    text.push_str(g);
                }
            }
            examples.push((place, text));
        }
    }
    assert!(
        excerpts >= 6,
        "only {excerpts} excerpts checked against their files"
    );
    for f in yaml_files(&repo().join("examples")) {
        let text = std::fs::read_to_string(&f).expect("read example");
        let place = f.strip_prefix(repo()).unwrap_or(&f).display().to_string();
        examples.push((place, text));
    }
    assert!(
        examples.len() >= 18,
        "only {} examples found",
        examples.len()
    );
    // The mesh examples describe a mesh where these services run.
    let control = server(&weft());
    for (i, service) in ["payments", "payments-v2", "web", "db", "reports"]
        .iter()
        .enumerate()
    {
        let body = serde_json::json!({"service": service, "id": format!("{service}-1"),
            "address": "127.0.0.1", "port": 20000 + i, "ttl": "300s"});
        let (status, _) = weft_testkit::mesh::http(
            control.addr,
            "POST",
            "/v1/catalog/register",
            body.to_string().as_bytes(),
        )
        .expect("register");
        assert_eq!(status, 200);
    }
    let mut problems = Vec::new();
    for (n, (place, text)) in examples.iter().enumerate() {
        let dir = temp_dir();
        let file = dir.join(format!("example-{n}.yaml"));
        std::fs::write(&file, text).expect("write");
        provide_files(text, &dir);
        let file = file.display().to_string();
        let (ok, out, err) = if is_mesh(text) {
            weft_cli(
                &weft(),
                &[
                    "apply",
                    "-f",
                    &file,
                    "--dry-run",
                    "--server",
                    &control.url(),
                ],
            )
        } else {
            weft_cli(&weft(), &["validate", &file])
        };
        if !ok {
            problems.push(format!("{place}:\n{out}{err}"));
        }
    }
    assert!(
        problems.is_empty(),
        "invalid examples:\n\n{}",
        problems.join("\n")
    );
}
