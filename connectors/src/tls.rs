//! TLS for the links to the brokers, Redis and the databases: the files a client
//! needs, and how a link is protected as configured.
//!
//! Every TLS client here verifies the server: its certificate must chain to a
//! trusted CA and name the host connected to. The trusted CAs are `ca_file`
//! when set (a hospital's private CA), otherwise the system's trust store
//! (RabbitMQ, Redis, Kafka) or the Mozilla roots (PostgreSQL, MySQL).

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{check_file_path, ConfigProblem};
use crate::error::{ConnectorError, Result};

/// How a link to a service is protected in transit, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// TLS, the server's certificate checked against trusted CAs and its host name.
    VerifiedTls,
    /// TLS that accepts a certificate without checking it, or without checking
    /// that it names the host: a man in the middle is not noticed.
    UnverifiedTls,
    /// No TLS, or TLS only when the server offers it (an attacker on the path
    /// strips it): everything sent, PHI included, can be read on the way.
    Plaintext,
}

impl Transport {
    /// Whether the link is protected against reading and tampering on the path.
    pub fn is_verified(self) -> bool {
        self == Self::VerifiedTls
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::VerifiedTls => "verified TLS",
            Self::UnverifiedTls => "TLS without certificate or host-name verification",
            Self::Plaintext => "plaintext",
        })
    }
}

/// Whether `host` (a name or an IP address, IPv6 without brackets) is this
/// machine: `localhost`, a `.localhost` name, a loopback or the unspecified
/// address. A link to it does not cross the network.
pub fn is_local_host(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    host.parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

/// The files of a TLS client: the CA to verify the server with, and a client
/// certificate for servers that authenticate clients by certificate. Paths are
/// read when connecting, so a renewed file is picked up by the next connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsClientFiles {
    /// PEM file of the CA certificate(s) the server's certificate must chain
    /// to. Unset: the system's trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (chain); needs `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key (PKCS#8, PKCS#1 or
    /// SEC1, unencrypted); needs `cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// A client certificate and its key, as PEM.
#[derive(Clone)]
pub(crate) struct ClientIdentity {
    pub(crate) cert_pem: Vec<u8>,
    pub(crate) key_pem: Vec<u8>,
}

// The key is a secret: never printed.
impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientIdentity { .. }")
    }
}

impl TlsClientFiles {
    /// Only a CA file.
    pub fn with_ca(ca_file: impl Into<PathBuf>) -> Self {
        Self {
            ca_file: Some(ca_file.into()),
            ..Self::default()
        }
    }

    /// Adds a client certificate and its key.
    pub fn client_certificate(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Self {
        self.cert_file = Some(cert_file.into());
        self.key_file = Some(key_file.into());
        self
    }

    /// Whether no file is set.
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none()
    }

    /// Checks the paths without reading them: each names a file, and the
    /// client certificate comes with its key. `fields` names the three fields
    /// as the owning config spells them (CA, certificate, key).
    pub fn validate(&self, fields: [&'static str; 3], out: &mut Vec<ConfigProblem>) {
        let [ca, cert, key] = fields;
        for (field, path) in [
            (ca, &self.ca_file),
            (cert, &self.cert_file),
            (key, &self.key_file),
        ] {
            if let Some(path) = path {
                check_file_path(field, path, out);
            }
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => out.push(ConfigProblem::new(
                key,
                format!("must be set with {cert}: a client certificate needs its key"),
            )),
            (None, Some(_)) => out.push(ConfigProblem::new(
                cert,
                format!("must be set with {key}: a key alone is no client certificate"),
            )),
            _ => {}
        }
    }

    /// The CA file's PEM, if one is set.
    pub(crate) fn read_ca(&self) -> Result<Option<Vec<u8>>> {
        self.ca_file.as_deref().map(read_pem).transpose()
    }

    /// The client certificate and key, if set.
    pub(crate) fn read_identity(&self) -> Result<Option<ClientIdentity>> {
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Ok(Some(ClientIdentity {
                cert_pem: read_pem(cert)?,
                key_pem: read_pem(key)?,
            })),
            _ => Ok(None),
        }
    }
}

/// Reads a PEM file (a CA, a certificate or a key).
fn read_pem(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| ConnectorError::io("reading TLS file", path, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: [&str; 3] = ["ca_file", "cert_file", "key_file"];

    fn problems(files: &TlsClientFiles) -> Vec<&'static str> {
        let mut out = Vec::new();
        files.validate(FIELDS, &mut out);
        out.iter().map(|p| p.field).collect()
    }

    #[test]
    fn a_ca_alone_or_with_a_whole_client_certificate_is_valid() {
        assert!(problems(&TlsClientFiles::default()).is_empty());
        assert!(problems(&TlsClientFiles::with_ca("/etc/mmt/ca.pem")).is_empty());
        let mtls =
            TlsClientFiles::with_ca("/etc/mmt/ca.pem").client_certificate("/c.pem", "/k.pem");
        assert!(problems(&mtls).is_empty());
    }

    #[test]
    fn half_a_client_certificate_and_directories_are_refused() {
        let cert_only = TlsClientFiles {
            cert_file: Some("/c.pem".into()),
            ..TlsClientFiles::default()
        };
        assert_eq!(problems(&cert_only), ["key_file"]);
        let key_only = TlsClientFiles {
            key_file: Some("/k.pem".into()),
            ..TlsClientFiles::default()
        };
        assert_eq!(problems(&key_only), ["cert_file"]);
        assert_eq!(problems(&TlsClientFiles::with_ca("/etc/mmt/")), ["ca_file"]);
    }

    #[test]
    fn a_missing_file_is_an_io_error_naming_it() {
        let files = TlsClientFiles::with_ca("/nonexistent/mmt-ca.pem");
        let error = files.read_ca().expect_err("missing");
        assert!(
            error.to_string().contains("/nonexistent/mmt-ca.pem"),
            "{error}"
        );
        assert!(TlsClientFiles::default().read_ca().expect("none").is_none());
        assert!(TlsClientFiles::default()
            .read_identity()
            .expect("none")
            .is_none());
    }

    #[test]
    fn local_hosts_are_loopback_names_and_addresses() {
        for host in [
            "localhost",
            "LOCALHOST",
            "db.localhost",
            "127.0.0.1",
            "127.8.0.1",
            "::1",
            "0.0.0.0",
        ] {
            assert!(is_local_host(host), "{host}");
        }
        for host in [
            "db.internal",
            "10.0.0.5",
            "localhost.example.org",
            "::2",
            "",
        ] {
            assert!(!is_local_host(host), "{host}");
        }
    }

    #[test]
    fn transports_say_whether_they_verify() {
        assert!(Transport::VerifiedTls.is_verified());
        assert!(!Transport::UnverifiedTls.is_verified());
        assert!(!Transport::Plaintext.is_verified());
        assert_eq!(Transport::Plaintext.to_string(), "plaintext");
    }
}
