//! Transparent mode: unmodified applications (curl, the MariaDB and Redis clients, run as
//! `nobody`) on "hosts" made of network namespaces, whose outbound TCP a sidecar with
//! `--transparent` intercepts with iptables. Real control plane with TLS and ACLs, real
//! MariaDB and Redis servers, real rules; the namespaces go when the test ends, however.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use weft_testkit::{eventually, mesh::Sidecar, metric_value, netns::Lab, require, temp_dir, Proc};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

/// A background process without a ready line (MariaDB, Redis), killed on drop.
struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The control plane on host `a` (TLS and ACLs on, DNS on), and how to reach it.
struct Control {
    _server: Proc,
    url: String,
    ca: PathBuf,
    token: String,
    dns_port: String,
}

impl Control {
    fn start(lab: &Lab) -> Control {
        let data = temp_dir().join("data");
        let at = format!("{}:0", lab.ip("a"));
        // DNS on port 53 (host a's own namespace: nothing else binds it there), so that
        // a's system resolver can use it: clients resolve `payments.service.weft` as they
        // would in production.
        let dns = format!("{}:53", lab.ip("a"));
        lab.use_nameserver("a", &lab.ip("a"));
        let mut c = lab.cmd("a", weft());
        c.args(["server", "--listen", &at, "--dns", &dns, "--data-dir"])
            .arg(&data);
        let server = Proc::spawn(c);
        let url = format!(
            "https://{}",
            server.ready["address"].as_str().expect("address")
        );
        let dns: std::net::SocketAddr = server.ready["dns"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("the ready line's dns address");
        let dns_port = dns.port().to_string();
        let ca = data.join("ca.pem");
        let out = lab
            .cmd("a", weft())
            .args(["acl", "bootstrap", "--server", &url])
            .env("WEFT_CA_FILE", &ca)
            .output()
            .expect("bootstrap");
        let token = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("secret:"))
            .unwrap_or_else(|| panic!("bootstrap: {}", text(&out)))
            .trim()
            .to_string();
        Control {
            _server: server,
            url,
            ca,
            token,
            dns_port,
        }
    }

    /// `dig +short NAME` on host `a` against this control plane's DNS.
    fn dig(&self, lab: &Lab, name: &str) -> String {
        let at = format!("@{}", lab.ip("a"));
        let out = lab
            .cmd("a", require("dig"))
            .args([&at, "-p", &self.dns_port, "+short", name])
            .output()
            .expect("dig");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `weft ARGS` on `host`, talking to this control plane.
    fn weft(&self, lab: &Lab, host: &str, args: &[&str]) -> Command {
        let mut c = lab.cmd(host, weft());
        c.args(args)
            .env("WEFT_SERVER", &self.url)
            .env("WEFT_TOKEN", &self.token)
            .env("WEFT_CA_FILE", &self.ca);
        c
    }

    fn apply(&self, lab: &Lab, yaml: &str) {
        let file = temp_dir().join("apply.yaml");
        std::fs::write(&file, yaml).expect("write");
        let out = self
            .weft(lab, "a", &["apply", "-f", &file.display().to_string()])
            .output()
            .expect("apply");
        assert!(out.status.success(), "apply: {}", text(&out));
    }

    /// A sidecar for `service` on `host` beside the app at `app`, synced.
    fn sidecar(&self, lab: &Lab, host: &str, service: &str, app: &str, extra: &[&str]) -> Sidecar {
        let inbound = format!("{}:15001", lab.ip(host));
        let mut args = vec![
            "sidecar",
            "--service",
            service,
            "--id",
            service,
            "--app",
            app,
            "--inbound",
            &inbound,
            "--health-interval",
            "300ms",
            "--deregister-delay",
            "100ms",
            "--ttl",
            "3s",
        ];
        args.extend_from_slice(extra);
        let sidecar = Sidecar {
            proc: Proc::spawn(self.weft(lab, host, &args)),
        };
        sidecar.wait_synced();
        sidecar
    }
}

/// The HTTP status `curl` (as `cmd`) gets from `url` ("000": no HTTP answer).
fn status_of(mut cmd: Command, url: &str) -> String {
    let out = cmd
        .args([
            "-s",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url,
        ])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `iptables -t nat -S` on `host`.
fn nat_rules(lab: &Lab, host: &str) -> String {
    let out = lab
        .cmd(host, require("iptables"))
        .args(["-w", "-t", "nat", "-S"])
        .output()
        .expect("iptables");
    text(&out)
}

/// SIGTERM, as a service manager stops it, and its exit.
fn stop(mut sidecar: Sidecar) {
    sidecar.proc.signal("TERM");
    assert!(
        sidecar.proc.wait_exit(Duration::from_secs(20)).is_some(),
        "the sidecar did not stop"
    );
}

/// `ip6tables -t nat -S` on `host`.
fn nat_rules6(lab: &Lab, host: &str) -> String {
    let out = lab
        .cmd(host, require("ip6tables"))
        .args(["-w", "-t", "nat", "-S"])
        .output()
        .expect("ip6tables");
    text(&out)
}

fn jumps(rules: &str) -> usize {
    rules
        .lines()
        .filter(|l| *l == "-A OUTPUT -p tcp -j WEFT_OUTPUT")
        .count()
}

/// The transparent web sidecar on host `a` (its app: an echo server).
fn web_sidecar(control: &Control, lab: &Lab, extra: &[&str]) -> Sidecar {
    let mut args = vec![
        "--transparent",
        "--transparent-port",
        "0",
        "--admin",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let s = control.sidecar(lab, "a", "web", "127.0.0.1:7000", &args);
    assert!(
        s.proc.ready["transparent"].as_u64().is_some_and(|p| p > 0),
        "{}",
        s.proc.ready
    );
    s
}

/// curl on host `a` as `nobody`; names resolve through the system resolver, which host
/// `a` points at the control plane's DNS.
fn curl(lab: &Lab, url: &str) -> Output {
    lab.app("a", require("curl"))
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl")
}

fn admin_metrics(lab: &Lab, sidecar: &Sidecar) -> String {
    let admin = sidecar.proc.ready["admin"]
        .as_str()
        .expect("admin")
        .to_string();
    let out = lab
        .cmd("a", require("curl"))
        .args(["-s", &format!("http://{admin}/metrics")])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn transparent_count(metrics: &str, outcome: &str) -> f64 {
    metric_value(
        metrics,
        &format!("weft_transparent_connections_total{{outcome=\"{outcome}\"}}"),
    )
    .unwrap_or(0.0)
}

/// MariaDB on `host`, 127.0.0.1:3306, grant tables off (any user connects).
fn mariadb(lab: &Lab, host: &str) -> Bg {
    let dir = temp_dir().join("mariadb");
    let out = Command::new(require("mariadb-install-db"))
        .args([
            "--user=root",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ])
        .arg(format!("--datadir={}", dir.display()))
        .output()
        .expect("mariadb-install-db");
    assert!(out.status.success(), "mariadb-install-db: {}", text(&out));
    let child = lab
        .cmd(host, require("mariadbd"))
        .args([
            "--no-defaults",
            "--user=root",
            "--skip-grant-tables",
            "--bind-address=127.0.0.1",
            "--port=3306",
        ])
        .arg(format!("--datadir={}", dir.display()))
        .arg(format!("--socket={}", dir.join("sock").display()))
        .arg(format!("--pid-file={}", dir.join("pid").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mariadbd");
    let db = Bg(child);
    eventually("MariaDB up", Duration::from_secs(60), || {
        let out = lab
            .cmd(host, "mariadb")
            .args([
                "-h",
                "127.0.0.1",
                "-P",
                "3306",
                "-u",
                "root",
                "-N",
                "-e",
                "select 1",
            ])
            .output()
            .ok()?;
        out.status.success().then_some(())
    });
    db
}

/// Runs `mariadb -e 'select 1+1'` as `cmd` and returns how long the whole session took.
fn select_two(mut cmd: Command) -> Duration {
    let t0 = Instant::now();
    let out = cmd
        .args([
            "-u",
            "root",
            "--connect-timeout=10",
            "-N",
            "-e",
            "select 1+1",
        ])
        .output()
        .expect("mariadb");
    let took = t0.elapsed();
    assert_eq!(text(&out).trim(), "2", "{}", text(&out));
    took
}

#[test]
fn unmodified_clients_reach_mesh_services_through_the_transparent_sidecar() {
    for tool in [
        "iptables",
        "setpriv",
        "curl",
        "dig",
        "mariadbd",
        "mariadb",
        "redis-server",
        "redis-cli",
    ] {
        require(tool);
    }
    // a: control plane, web (transparent); b: payments (HTTP); c: db (MariaDB);
    // d: cache (Redis); e: a server outside the mesh.
    // f: ledger, reached over IPv6.
    let lab = Lab::new(&["a", "b", "c", "d", "e", "f"]);
    let control = Control::start(&lab);
    control.apply(
        &lab,
        "kind: Intention\nmetadata: {name: allow-all}\nspec: {source: '*', destination: '*', action: allow}\n",
    );

    let _payments_app = Proc::spawn({
        let mut c = lab.cmd("b", weft());
        // On every address of b: without its sidecar, anyone could call it directly.
        c.args(["echo", "--listen", "0.0.0.0:8080", "--name", "payments-1"]);
        c
    });
    // payments' sidecar is transparent too: connections for the app's port that arrive
    // from the network go to its mutual-TLS inbound listener.
    let _payments = control.sidecar(
        &lab,
        "b",
        "payments",
        "127.0.0.1:8080",
        &[
            "--health",
            "http:/",
            "--transparent",
            "--transparent-port",
            "0",
        ],
    );
    let direct = status_of(
        lab.cmd("e", require("curl")),
        &format!("http://{}:8080/", lab.ip("b")),
    );
    assert_eq!(
        direct, "000",
        "a plaintext caller outside the mesh does not reach payments' app"
    );
    let local = status_of(lab.app("b", require("curl")), "http://127.0.0.1:8080/");
    assert_eq!(local, "200", "on its own host, over loopback, it does");
    let _db_server = mariadb(&lab, "c");
    let _db = control.sidecar(
        &lab,
        "c",
        "db",
        "127.0.0.1:3306",
        &["--app-protocol", "tcp"],
    );
    let _redis_server = Bg(lab
        .cmd("d", require("redis-server"))
        .args([
            "--port",
            "6379",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server"));
    let _cache = control.sidecar(
        &lab,
        "d",
        "cache",
        "127.0.0.1:6379",
        &["--app-protocol", "tcp"],
    );
    let outside = format!("{}:9000", lab.ip("e"));
    let _outside = Proc::spawn({
        let mut c = lab.cmd("e", weft());
        c.args(["echo", "--listen", &outside, "--name", "outside"]);
        c
    });
    let _web_app = Proc::spawn({
        let mut c = lab.cmd("a", weft());
        c.args(["echo", "--listen", "127.0.0.1:7000", "--name", "web-1"]);
        c
    });
    let web = web_sidecar(&control, &lab, &[]);
    assert_eq!(jumps(&nat_rules(&lab, "a")), 1, "{}", nat_rules(&lab, "a"));

    // The client finds payments by DNS, and calls it as if nothing were in between.
    let payments_ip = eventually("payments in DNS", Duration::from_secs(15), || {
        let ip = control.dig(&lab, "payments.service.weft");
        (!ip.is_empty()).then_some(ip)
    });
    assert_eq!(payments_ip, lab.ip("b"));
    let out = curl(&lab, "http://payments.service.weft:8080/headers");
    let body = text(&out);
    let (json, status) = body.rsplit_once('\n').expect("status line");
    assert_eq!(status, "200", "{body}");
    let seen: Value = serde_json::from_str(json).expect("echo JSON");
    assert_eq!(
        seen["headers"]["x-weft-source-identity"], "spiffe://weft.local/svc/web",
        "the callee sees the caller's identity: the call went through mutual TLS: {seen}"
    );
    // Without the mesh there is no way there: b sends callers of its app's port to its
    // mutual-TLS listener (checked above).

    // The service's virtual IP: one address, whatever its instances, balanced by the mesh.
    let vip = eventually(
        "payments' virtual IP in DNS",
        Duration::from_secs(15),
        || {
            let ip = control.dig(&lab, "payments.virtual.weft");
            ip.starts_with("240.0.").then_some(ip)
        },
    );
    for url in [
        format!("http://{vip}/headers"),
        "http://payments.virtual.weft/headers".into(),
    ] {
        let body = text(&curl(&lab, &url));
        assert!(
            body.ends_with("\n200") && body.contains("spiffe://weft.local/svc/web"),
            "{url}: {body}"
        );
    }

    // IPv6: ledger's instance is registered at f's IPv6 address; the client resolves its
    // AAAA and connects; ip6tables redirects to the sidecar's [::1] listener.
    let _ledger_app = Proc::spawn({
        let mut c = lab.cmd("f", weft());
        c.args(["echo", "--listen", "127.0.0.1:8080", "--name", "ledger-1"]);
        c
    });
    let inbound6 = format!("[{}]:15001", lab.ip6("f"));
    let ledger = Sidecar {
        proc: Proc::spawn(control.weft(
            &lab,
            "f",
            &[
                "sidecar",
                "--service",
                "ledger",
                "--id",
                "ledger-1",
                "--app",
                "127.0.0.1:8080",
                "--inbound",
                &inbound6,
                "--health-interval",
                "300ms",
            ],
        )),
    };
    ledger.wait_synced();
    assert!(
        nat_rules6(&lab, "a").contains("-A OUTPUT -p tcp -j WEFT_OUTPUT"),
        "{}",
        nat_rules6(&lab, "a")
    );
    let body = eventually("ledger over IPv6", Duration::from_secs(15), || {
        let body = text(&curl(&lab, "http://ledger.service.weft:8080/"));
        body.ends_with("\n200").then_some(body)
    });
    assert!(
        body.contains("ledger-1") && body.contains("spiffe://weft.local/svc/web"),
        "{body}"
    );

    // MariaDB speaks first: the client gets its greeting through the mesh, no stall.
    let through_mesh = || {
        let mut c = lab.app("a", require("mariadb"));
        c.args(["-h", "db.service.weft", "-P", "3306"]);
        c
    };
    let first_took = select_two(through_mesh());
    let mesh_took = select_two(through_mesh());
    let direct_took = select_two({
        let mut c = lab.cmd("c", require("mariadb"));
        c.args(["-h", "127.0.0.1", "-P", "3306"]);
        c
    });
    eprintln!(
        "MariaDB session (connect, handshake, select 1+1): through the mesh {mesh_took:?} (the first, which subscribed to db: {first_took:?}), direct {direct_took:?}"
    );
    // Redis through the mesh.
    let out = lab
        .app("a", require("redis-cli"))
        .args([
            "-h",
            "cache.service.weft",
            "-p",
            "6379",
            "set",
            "k",
            "woven",
        ])
        .output()
        .expect("redis-cli");
    assert_eq!(text(&out).trim(), "OK", "{}", text(&out));
    let out = lab
        .app("a", require("redis-cli"))
        .args(["-h", "cache.service.weft", "get", "k"])
        .output()
        .expect("redis-cli");
    assert_eq!(text(&out).trim(), "woven");

    // Outside the mesh: through, untouched (allow-any, the default).
    let out = curl(&lab, &format!("http://{outside}/"));
    assert!(text(&out).ends_with("\n200"), "{}", text(&out));

    // TLS from the client to an HTTP service's host: the mesh carries HTTP, so it goes to
    // the address the client meant (here a plain server that does not speak TLS).
    let before = transparent_count(&admin_metrics(&lab, &web), "passthrough");
    let _other_port = Proc::spawn({
        let mut c = lab.cmd("b", weft());
        c.args(["echo", "--listen", "0.0.0.0:9443", "--name", "b-9443"]);
        c
    });
    let tls = lab
        .app("a", require("openssl"))
        .args([
            "s_client",
            "-connect",
            &format!("{}:9443", lab.ip("b")),
            "-brief",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("openssl");
    assert!(!tls.status.success(), "{}", text(&tls));
    let metrics = admin_metrics(&lab, &web);
    assert_eq!(
        metric_value(
            &metrics,
            "weft_transparent_protocols_total{protocol=\"tls\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(metric_value(
        &metrics,
        "weft_transparent_protocols_total{protocol=\"http1\"}"
    )
    .is_some_and(|n| n >= 2.0));
    assert_eq!(
        transparent_count(&metrics, "passthrough"),
        before + 1.0,
        "{metrics}"
    );
    assert!(transparent_count(&metrics, "mesh") >= 6.0, "{metrics}");
    assert!(
        transparent_count(&metrics, "passthrough") >= 1.0,
        "{metrics}"
    );
    assert!(
        metrics.contains("listener=\"sidecar/out-payments\""),
        "on-demand listener: {metrics}"
    );

    // SIGTERM: the rules go with the sidecar.
    stop(web);
    assert!(
        !nat_rules(&lab, "a").contains("WEFT"),
        "{}",
        nat_rules(&lab, "a")
    );

    // kill -9 leaves them; the next start replaces them (one jump, not two).
    let mut killed = web_sidecar(&control, &lab, &["--outbound-policy", "registry-only"]);
    killed.proc.child.kill().expect("kill -9");
    let _ = killed.proc.child.wait();
    assert_eq!(jumps(&nat_rules(&lab, "a")), 1);
    let web = web_sidecar(&control, &lab, &["--outbound-policy", "registry-only"]);
    assert_eq!(jumps(&nat_rules(&lab, "a")), 1, "{}", nat_rules(&lab, "a"));

    // registry-only: outside refused and counted; the mesh still works.
    let out = curl(&lab, &format!("http://{outside}/"));
    assert!(!text(&out).ends_with("\n200"), "{}", text(&out));
    let out = curl(&lab, "http://payments.service.weft:8080/");
    assert!(text(&out).ends_with("\n200"), "{}", text(&out));
    let metrics = admin_metrics(&lab, &web);
    assert!(transparent_count(&metrics, "refused") >= 1.0, "{metrics}");

    // Intentions apply to intercepted calls.
    control.apply(
        &lab,
        "kind: Intention\nmetadata: {name: no-web-payments}\nspec: {source: web, destination: payments, action: deny}\n",
    );
    eventually(
        "the deny intention applies",
        Duration::from_secs(15),
        || {
            let out = curl(&lab, "http://payments.service.weft:8080/");
            text(&out).ends_with("\n403").then_some(())
        },
    );
    stop(web);
    assert!(
        !nat_rules(&lab, "a").contains("WEFT"),
        "{}",
        nat_rules(&lab, "a")
    );
}

#[test]
fn print_rules_shows_what_would_be_installed_and_changes_nothing() {
    let out = Command::new(weft())
        .args([
            "sidecar",
            "--service",
            "web",
            "--app",
            "127.0.0.1:7000",
            "--inbound",
            "0.0.0.0:15001",
            "--transparent",
            "--exclude-outbound-ports",
            "22,5432",
            "--exclude-outbound-cidrs",
            "10.9.0.0/16",
            "--print-rules",
        ])
        .output()
        .expect("weft");
    assert!(out.status.success(), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    for want in [
        "iptables -w -t nat -A WEFT_OUTPUT -p tcp --dport 22 -j RETURN",
        "iptables -w -t nat -A WEFT_OUTPUT -p tcp --dport 5432 -j RETURN",
        "iptables -w -t nat -A WEFT_OUTPUT -d 10.9.0.0/16 -j RETURN",
        "iptables -w -t nat -A WEFT_OUTPUT -p tcp -j REDIRECT --to-ports 15006",
        "iptables -w -t nat -A WEFT_INBOUND -p tcp --dport 7000 -j REDIRECT --to-ports 15001",
        "ip6tables -w -t nat -A WEFT_OUTPUT -d ::1/128 -j RETURN",
    ] {
        assert!(s.contains(want), "missing `{want}` in:\n{s}");
    }
    let out = Command::new(weft())
        .args([
            "sidecar",
            "--service",
            "web",
            "--app",
            "127.0.0.1:7000",
            "--transparent",
            "--outbound-policy",
            "deny-all",
            "--print-rules",
        ])
        .output()
        .expect("weft");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("--outbound-policy deny-all: expected allow-any or registry-only"),
        "{}",
        text(&out)
    );
}
