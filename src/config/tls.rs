//! `[service.tls]`: what the config says about TLS termination. Only paths
//! and choices: the files are read when the config is applied or checked
//! (`crate::tls`), so parsing stays pure.

use std::path::PathBuf;

/// A TLS service's settings; every file comes with the `FILE:LINE` that
/// named it, for the errors found when it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Where `[service.tls]` is.
    pub origin: String,
    pub cert: Located<PathBuf>,
    pub key: Located<PathBuf>,
    pub client_ca: Option<Located<PathBuf>>,
    pub client_cert: ClientCert,
    /// ALPN protocols, in preference order.
    pub alpn: Vec<String>,
    pub min_version: TlsVersion,
    /// Seconds; at least 1.
    pub handshake_timeout: u32,
    pub sni: Vec<SniCert>,
}

/// `[[service.tls.sni]]`: another certificate, chosen by the client's SNI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniCert {
    pub origin: String,
    /// Lower-case DNS names; `*.example.org` matches one label.
    pub names: Vec<String>,
    pub cert: Located<PathBuf>,
    pub key: Located<PathBuf>,
}

/// A value and the `FILE:LINE` it was given on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    pub value: T,
    pub at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCert {
    Required,
    Optional,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

pub const DEFAULT_HANDSHAKE_TIMEOUT: u32 = 10;
