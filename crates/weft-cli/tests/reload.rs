//! End to end: the config file is followed. A changed file is applied without a restart; an
//! invalid one is refused whole (reason in /config, counted in /metrics) while the previous
//! version keeps serving; SIGHUP reloads on demand.

use std::path::PathBuf;
use std::time::Duration;

use weft_testkit::{
    curl, echo, eventually, metric_value, one_service_config, proxy, replace_file, Echo, Proxy,
};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

fn to(e: &Echo) -> String {
    one_service_config(
        "s",
        &format!("  endpoints: [{{address: \"{}\"}}]\n", e.addr),
    )
}

fn served_by(p: &Proxy) -> String {
    let r = curl(&[&format!("{}/", p.url("gw/web"))]);
    r.header("x-echo-name").unwrap_or_default().to_string()
}

fn failures(p: &Proxy) -> f64 {
    metric_value(
        &p.admin_get("/metrics"),
        "weft_config_loads_total{result=\"failure\"}",
    )
    .unwrap_or(0.0)
}

#[test]
fn a_changed_file_is_applied_and_an_invalid_one_refused() {
    let a = echo(&weft(), "a", &[]);
    let b = echo(&weft(), "b", &[]);
    let p = proxy(&weft(), &to(&a), &["--watch-interval", "50ms"]);
    assert_eq!(served_by(&p), "a");

    replace_file(&p.config, &to(&b));
    eventually("the new version to serve", Duration::from_secs(10), || {
        (served_by(&p) == "b").then_some(())
    });

    // Invalid: a route to a service that does not exist. Refused whole, with file and line.
    let broken = to(&b).replace("backendRefs: [{name: s}]", "backendRefs: [{name: ghost}]");
    assert_ne!(broken, to(&b));
    replace_file(&p.config, &broken);
    eventually("the refusal to be counted", Duration::from_secs(10), || {
        (failures(&p) >= 1.0).then_some(())
    });
    let cfg: serde_json::Value = serde_json::from_str(&p.admin_get("/config")).unwrap();
    let reason = cfg["last_rejected"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.contains(&format!("{}:", p.config.display()))
            && reason.contains("unknown Service `ghost`"),
        "{cfg}"
    );
    assert_eq!(served_by(&p), "b", "the previous version must keep serving");

    // A listener moved to an address that is taken: refused whole, nothing half applied.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let moved = to(&b).replace("127.0.0.1:0", &taken.local_addr().unwrap().to_string());
    replace_file(&p.config, &moved);
    eventually(
        "the listener change to be refused",
        Duration::from_secs(10),
        || (failures(&p) >= 2.0).then_some(()),
    );
    let cfg: serde_json::Value = serde_json::from_str(&p.admin_get("/config")).unwrap();
    assert!(
        cfg["last_rejected"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot listen on"),
        "{cfg}"
    );
    assert_eq!(served_by(&p), "b");

    // Going back to the version that serves clears the refusal too (it is the newest
    // attempt, and it is good)...
    replace_file(&p.config, &to(&b));
    eventually(
        "the refusal cleared by the serving version",
        Duration::from_secs(10),
        || {
            let cfg: serde_json::Value = serde_json::from_str(&p.admin_get("/config")).ok()?;
            cfg["last_rejected"].is_null().then_some(())
        },
    );
    // ...and a new valid version, of course.
    replace_file(&p.config, &moved);
    eventually("refused again", Duration::from_secs(10), || {
        (failures(&p) >= 3.0).then_some(())
    });
    replace_file(&p.config, &to(&a));
    eventually("recovery", Duration::from_secs(10), || {
        (served_by(&p) == "a").then_some(())
    });
    let cfg: serde_json::Value = serde_json::from_str(&p.admin_get("/config")).unwrap();
    assert!(cfg["last_rejected"].is_null(), "{cfg}");
}

#[test]
fn sighup_reloads_when_polling_is_off() {
    let a = echo(&weft(), "a", &[]);
    let b = echo(&weft(), "b", &[]);
    let mut p = proxy(&weft(), &to(&a), &["--watch-interval", "off"]);
    // SIGHUP's default action is to terminate: one sent as soon as the proxy says it is
    // ready must reload, not kill it.
    p.proc.signal("HUP");
    assert_eq!(served_by(&p), "a");
    assert!(
        p.proc.child.try_wait().unwrap().is_none(),
        "SIGHUP killed the proxy"
    );
    replace_file(&p.config, &to(&b));
    // With polling off nothing changes until the signal. (The check is only as long as
    // the short pause; what it guards is that polling really is off.)
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(served_by(&p), "a");
    p.proc.signal("HUP");
    eventually(
        "SIGHUP to apply the new version",
        Duration::from_secs(10),
        || (served_by(&p) == "b").then_some(()),
    );
}
