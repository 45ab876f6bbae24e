//! A small network of "hosts" for tests that need real addresses and iptables: one
//! network namespace per host, each with an `eth0` on a bridge that lives in a namespace of
//! its own, `10.77.0.0/24` and `fd77::/64` between them. Everything is created by the test and removed
//! when the [`Lab`] drops (the namespaces, and with them their links and iptables rules),
//! also when the test fails. Needs root (CI runs as root).

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The hosts of one test, by name.
pub struct Lab {
    prefix: String,
    hosts: Vec<String>,
}

/// Whether this process runs as root (uid 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .map(|u| u == "0")
        })
        .unwrap_or(false)
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new(crate::require("ip"))
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Lab {
    /// Creates `hosts` (host *k* gets `10.77.0.<k+1>` and `fd77::<k+1>`), or fails the
    /// test saying why.
    pub fn new(hosts: &[&str]) -> Lab {
        assert!(
            is_root(),
            "this test creates network namespaces and iptables rules: run it as root (CI does)"
        );
        static N: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!(
            "wt{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let lab = Lab {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            prefix,
        };
        // Removed by Drop from here on, whatever fails next.
        if let Err(e) = lab.build() {
            panic!("building the test network: {e}");
        }
        lab
    }

    fn switch(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    fn build(&self) -> Result<(), String> {
        let sw = self.switch();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for (k, host) in self.hosts.iter().enumerate() {
            let ns = self.ns(host);
            let port = format!("p{k}");
            ip(&["netns", "add", &ns])?;
            ip(&[
                "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                &sw,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &sw, "link", "set", &port, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", self.ip(host)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            // Every other address is "on the wire": a connection to a virtual IP
            // (240.0.0.0/16) gets as far as the host's iptables, as with a real default route.
            ip(&["-n", &ns, "route", "add", "default", "dev", "eth0"])?;
            // IPv6 too: fd77::<k+1>, usable at once (no duplicate address detection).
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/64", self.ip6(host)),
                "dev",
                "eth0",
                "nodad",
            ])?;
            ip(&["-n", &ns, "-6", "route", "add", "default", "dev", "eth0"])?;
        }
        Ok(())
    }

    /// The namespace of `host`.
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// The address of `host`.
    pub fn ip(&self, host: &str) -> String {
        let k = self
            .hosts
            .iter()
            .position(|h| h == host)
            .unwrap_or_else(|| panic!("no host {host} in the lab"));
        format!("10.77.0.{}", k + 1)
    }

    /// The IPv6 address of `host`.
    pub fn ip6(&self, host: &str) -> String {
        let v4 = self.ip(host);
        let k = v4.rsplit('.').next().unwrap_or("0");
        format!("fd77::{k}")
    }

    /// Points `host`'s system resolver at `nameserver` (port 53): `ip netns exec` mounts
    /// `/etc/netns/<namespace>/resolv.conf` over `/etc/resolv.conf` for what it runs.
    /// Removed with the lab.
    pub fn use_nameserver(&self, host: &str, nameserver: &str) {
        let dir = std::path::Path::new("/etc/netns").join(self.ns(host));
        std::fs::create_dir_all(&dir).expect("create /etc/netns/<namespace>");
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {nameserver}\noptions timeout:2 attempts:2\n"),
        )
        .expect("write resolv.conf");
    }

    /// `program` run on `host` (as root).
    pub fn cmd(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(host)]).arg(program);
        c
    }

    /// `program` run on `host` as the unprivileged user `nobody` — an application whose
    /// traffic a transparent sidecar (running as root) intercepts.
    pub fn app(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(host)])
            .arg(crate::require("setpriv"))
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(program);
        c
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = ip(&["netns", "del", &self.ns(host)]);
            let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(self.ns(host)));
        }
        let _ = ip(&["netns", "del", &self.switch()]);
    }
}
