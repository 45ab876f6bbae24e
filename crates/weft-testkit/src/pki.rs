//! A throwaway certificate authority for TLS tests: a CA, leaves it signs (valid or
//! expired), all written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A CA whose certificate is `ca_file`.
pub struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM): what clients trust.
    pub ca_file: PathBuf,
}

/// A certificate and key written to disk.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

impl Pki {
    /// A new CA named `name`, with its files under `dir`.
    pub fn new(dir: &Path, name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("weft test CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let ca_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_file, cert.pem()).expect("write CA");
        Pki {
            dir: dir.to_path_buf(),
            issuer: Issuer::new(params, key),
            ca_file,
        }
    }

    /// A leaf for `names` (DNS names or IP addresses), valid now.
    pub fn leaf(&self, stem: &str, names: &[&str]) -> Leaf {
        self.issue(stem, names, false)
    }

    /// An intermediate CA signed by this one; its key file is readable by its owner only.
    pub fn intermediate(&self, stem: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("weft test intermediate {stem}"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let key = KeyPair::generate().expect("intermediate key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign intermediate");
        let leaf = Leaf {
            cert: self.dir.join(format!("{stem}.crt")),
            key: self.dir.join(format!("{stem}.key")),
        };
        std::fs::write(&leaf.cert, cert.pem()).expect("write cert");
        std::fs::write(&leaf.key, key.serialize_pem()).expect("write key");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&leaf.key, std::fs::Permissions::from_mode(0o600))
            .expect("chmod key");
        leaf
    }

    /// A leaf for `names` that expired in 2001.
    pub fn expired_leaf(&self, stem: &str, names: &[&str]) -> Leaf {
        self.issue(stem, names, true)
    }

    fn issue(&self, stem: &str, names: &[&str], expired: bool) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let leaf = Leaf {
            cert: self.dir.join(format!("{stem}.crt")),
            key: self.dir.join(format!("{stem}.key")),
        };
        std::fs::write(&leaf.cert, cert.pem()).expect("write cert");
        std::fs::write(&leaf.key, key.serialize_pem()).expect("write key");
        leaf
    }
}
