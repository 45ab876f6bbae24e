//! Virtual IPs: one IPv4 address per service from a range (`--virtual-ips`, default
//! `240.0.0.0/16`, addresses no network routes), that DNS answers for
//! `<service>.virtual.<domain>` and a transparent sidecar recognises as "a call to that
//! service", whatever its instances do. An application that calls a VIP is balanced by
//! the mesh over every healthy instance, like a Kubernetes ClusterIP.
//!
//! The leader gives each service with registered instances the lowest free address, in
//! one transaction over two keys that must not exist yet (`/weft/vip/service/<name>` →
//! the address, `/weft/vip/ip/<address>` → the name), so two replicas can never hand out
//! the same address or give a service two. An address stays with its service for good:
//! a service that comes back keeps its VIP, and a client holding an old answer still
//! reaches the service it asked for.

use std::net::Ipv4Addr;

use crate::store::{Compare, Op, Store, StoreError, Txn};

/// Prefix of the VIP keys.
pub const PREFIX: &str = "/weft/vip/";
/// `service` → address.
pub const BY_SERVICE: &str = "/weft/vip/service/";
/// address → `service`.
pub const BY_IP: &str = "/weft/vip/ip/";

/// The range VIPs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    base: u32,
    size: u32,
}

impl Range {
    /// `A.B.C.D/LEN`, LEN 8 to 30 (the network and broadcast addresses are not handed out).
    pub fn parse(s: &str) -> Result<Range, String> {
        let (ip, len) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}`: expected an IPv4 CIDR such as 240.0.0.0/16"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("`{s}`: `{ip}` is not an IPv4 address"))?;
        let len: u32 = len
            .parse()
            .ok()
            .filter(|l| (8..=30).contains(l))
            .ok_or_else(|| format!("`{s}`: the prefix length must be 8 to 30"))?;
        let mask = u32::MAX << (32 - len);
        Ok(Range {
            base: u32::from(ip) & mask,
            size: 1 << (32 - len),
        })
    }

    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip).wrapping_sub(self.base) < self.size
    }

    /// The lowest address of the range not in `taken` (network and broadcast skipped).
    pub fn lowest_free(&self, taken: impl Fn(Ipv4Addr) -> bool) -> Option<Ipv4Addr> {
        (1..self.size - 1)
            .map(|i| Ipv4Addr::from(self.base + i))
            .find(|ip| !taken(*ip))
    }
}

impl Default for Range {
    fn default() -> Self {
        Range::parse("240.0.0.0/16").expect("a valid default")
    }
}

/// Gives `service` the address `ip` unless either already has a VIP; Ok(false) when one
/// of them was taken meanwhile (another replica, a concurrent allocation).
pub async fn assign(store: &dyn Store, service: &str, ip: Ipv4Addr) -> Result<bool, StoreError> {
    let (by_service, by_ip) = (format!("{BY_SERVICE}{service}"), format!("{BY_IP}{ip}"));
    let txn = Txn {
        compares: vec![
            Compare {
                key: by_service.clone(),
                mod_revision: 0,
            },
            Compare {
                key: by_ip.clone(),
                mod_revision: 0,
            },
        ],
        ops: vec![
            Op::Put {
                key: by_service,
                value: ip.to_string().into_bytes(),
                lease: None,
            },
            Op::Put {
                key: by_ip,
                value: service.as_bytes().to_vec(),
                lease: None,
            },
        ],
    };
    Ok(store.txn(txn).await?.succeeded)
}

/// Gives each of the `missing` services (with instances, no VIP) an address not `taken`
/// (the leader calls this when the view moves). Returns how many were given.
pub async fn assign_missing(
    store: &dyn Store,
    missing: Vec<String>,
    mut taken: std::collections::HashSet<Ipv4Addr>,
    range: Range,
) -> Result<usize, StoreError> {
    let mut given = 0;
    for service in missing {
        let Some(ip) = range.lowest_free(|ip| taken.contains(&ip)) else {
            tracing::warn!(%service, "no virtual IP left in the range (--virtual-ips)");
            break;
        };
        taken.insert(ip);
        if assign(store, &service, ip).await? {
            given += 1;
            tracing::info!(%service, %ip, "virtual IP assigned");
        }
    }
    Ok(given)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_hand_out_the_lowest_free_host_address() {
        let r = Range::parse("240.0.0.0/16").unwrap();
        assert!(r.contains("240.0.255.255".parse().unwrap()));
        assert!(!r.contains("240.1.0.0".parse().unwrap()));
        assert!(!r.contains("10.0.0.1".parse().unwrap()));
        assert_eq!(r.lowest_free(|_| false), Some("240.0.0.1".parse().unwrap()));
        let taken = |ip: Ipv4Addr| ip.octets()[3] < 9 && ip.octets()[2] == 0;
        assert_eq!(r.lowest_free(taken), Some("240.0.0.9".parse().unwrap()));
        let tiny = Range::parse("10.1.2.0/30").unwrap();
        assert_eq!(
            tiny.lowest_free(|ip| ip.octets()[3] == 1),
            Some("10.1.2.2".parse().unwrap())
        );
        assert_eq!(tiny.lowest_free(|_| true), None);
        assert_eq!(
            Range::parse("10.1.2.77/24").unwrap(),
            Range::parse("10.1.2.0/24").unwrap()
        );
        assert!(Range::parse("240.0.0.0").unwrap_err().contains("CIDR"));
        assert!(Range::parse("240.0.0.0/31")
            .unwrap_err()
            .contains("8 to 30"));
        assert!(Range::parse("fd00::/64").unwrap_err().contains("IPv4"));
    }

    #[tokio::test]
    async fn a_service_gets_one_address_and_an_address_one_service() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::embedded::Embedded::open(dir.path()).unwrap();
        let a: Ipv4Addr = "240.0.0.1".parse().unwrap();
        let b: Ipv4Addr = "240.0.0.2".parse().unwrap();
        assert!(assign(&store, "payments", a).await.unwrap());
        assert!(
            !assign(&store, "payments", b).await.unwrap(),
            "payments has one already"
        );
        assert!(
            !assign(&store, "db", a).await.unwrap(),
            "240.0.0.1 is payments'"
        );
        assert!(assign(&store, "db", b).await.unwrap());
        let page = crate::store::list_all(&store, PREFIX).await.unwrap();
        let keys: Vec<&str> = page.kvs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "/weft/vip/ip/240.0.0.1",
                "/weft/vip/ip/240.0.0.2",
                "/weft/vip/service/db",
                "/weft/vip/service/payments",
            ]
        );
    }
}
