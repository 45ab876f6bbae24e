use std::time::Duration;

use rustls::{ClientConnection, ServerConnection};

use super::*;
use crate::ca::{new_csr, new_root, Signer};

const HOUR: Duration = Duration::from_secs(3600);

struct Ca {
    signer: Signer,
    bundle: Vec<CertificateDer<'static>>,
}

fn ca(td: &str) -> Ca {
    let (cert, key) = new_root(td, 10 * HOUR).unwrap();
    Ca {
        signer: Signer::new(&cert, &key).unwrap(),
        bundle: bundle_from_pem(&cert).unwrap(),
    }
}

fn identity_valid(ca: &Ca, id: &str, from: SystemTime, to: SystemTime) -> Identity {
    let (csr, key) = new_csr(id).unwrap();
    let cert = ca.signer.sign_valid(&csr, id, from, to).unwrap();
    Identity::from_pem(&cert, &key).unwrap()
}

fn identity(ca: &Ca, id: &str) -> Identity {
    let now = SystemTime::now();
    identity_valid(ca, id, now - Duration::from_secs(60), now + HOUR)
}

fn mesh(ca: &Ca, td: &str, service: &str) -> Arc<MeshTls> {
    MeshTls::new(
        td,
        identity(ca, &spiffe::service_id(td, service)),
        &ca.bundle,
    )
    .unwrap()
}

/// Runs a handshake in memory: the client's and the server's view of their peer, or
/// the error that ended it.
fn handshake(
    client: &Arc<MeshTls>,
    expect: &str,
    server: &Arc<MeshTls>,
) -> Result<(Option<String>, Option<String>), Error> {
    let resumption = Resumption::new().unwrap();
    let sc = server.server_config(&[], &resumption).unwrap();
    let cc = client.client_config(expect, &[]).unwrap();
    let mut c = ClientConnection::new(cc, ServerName::try_from("peer.mesh").unwrap()).unwrap();
    let mut s = ServerConnection::new(sc).unwrap();
    for _ in 0..10 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        s.read_tls(&mut &buf[..]).unwrap();
        s.process_new_packets()?;
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        c.read_tls(&mut &buf[..]).unwrap();
        c.process_new_packets()?;
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok((peer_identity(&c), peer_identity(&s)));
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn both_sides_learn_and_check_the_others_identity() {
    let ca = ca("weft.local");
    let web = mesh(&ca, "weft.local", "web");
    let db = mesh(&ca, "weft.local", "db");
    let (server_seen, client_seen) = handshake(&web, "spiffe://weft.local/svc/db", &db).unwrap();
    assert_eq!(server_seen.as_deref(), Some("spiffe://weft.local/svc/db"));
    assert_eq!(client_seen.as_deref(), Some("spiffe://weft.local/svc/web"));
}

#[test]
fn a_caller_refuses_a_server_that_is_not_the_service_it_meant() {
    let ca = ca("weft.local");
    let web = mesh(&ca, "weft.local", "web");
    let impostor = mesh(&ca, "weft.local", "cache");
    assert!(handshake(&web, "spiffe://weft.local/svc/db", &impostor).is_err());
}

#[test]
fn certificates_from_another_ca_or_trust_domain_or_expired_are_refused() {
    let ca1 = ca("weft.local");
    let db = mesh(&ca1, "weft.local", "db");
    // Signed by another CA (claiming the right trust domain).
    let ca2 = ca("weft.local");
    let stranger = mesh(&ca2, "weft.local", "web");
    stranger.update(None, Some(&ca1.bundle)).unwrap(); // it even trusts our root
    assert!(handshake(&stranger, "spiffe://weft.local/svc/db", &db).is_err());
    // Signed by our CA, but for another trust domain.
    let foreign = MeshTls::new(
        "other.example",
        identity(&ca1, "spiffe://other.example/svc/web"),
        &ca1.bundle,
    )
    .unwrap();
    assert!(handshake(&foreign, "spiffe://weft.local/svc/db", &db).is_err());
    // Ours, expired.
    let now = SystemTime::now();
    let expired = MeshTls::new(
        "weft.local",
        identity_valid(
            &ca1,
            "spiffe://weft.local/svc/web",
            now - 2 * HOUR,
            now - HOUR,
        ),
        &ca1.bundle,
    )
    .unwrap();
    assert!(handshake(&expired, "spiffe://weft.local/svc/db", &db).is_err());
    // The control: a valid one passes.
    let web = mesh(&ca1, "weft.local", "web");
    assert!(handshake(&web, "spiffe://weft.local/svc/db", &db).is_ok());
}

#[test]
fn a_renewed_identity_and_a_new_root_apply_to_the_next_handshake() {
    let old = ca("weft.local");
    let web = mesh(&old, "weft.local", "web");
    let db = mesh(&old, "weft.local", "db");
    let before = db.identity().key.cert[0].clone();
    // A root rotation: both trust old and new, then db is reissued under the new one.
    let new = ca("weft.local");
    let both: Vec<_> = old.bundle.iter().chain(&new.bundle).cloned().collect();
    web.update(None, Some(&both)).unwrap();
    db.update(
        Some(identity(&new, "spiffe://weft.local/svc/db")),
        Some(&both),
    )
    .unwrap();
    assert_ne!(db.identity().key.cert[0], before);
    assert!(handshake(&web, "spiffe://weft.local/svc/db", &db).is_ok());
    // A caller that only trusts the old root refuses db's new certificate.
    let stale = mesh(&old, "weft.local", "web");
    assert!(handshake(&stale, "spiffe://weft.local/svc/db", &db).is_err());
}

#[test]
fn debug_output_never_shows_a_key() {
    let ca = ca("weft.local");
    let m = mesh(&ca, "weft.local", "web");
    let text = format!("{m:?} {:?}", m.identity());
    assert!(text.contains("spiffe://weft.local/svc/web"));
    assert!(!text.contains("PRIVATE"), "{text}");
}
