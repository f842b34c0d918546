//! TLS termination with rustls: the server config a TLS service is served
//! with (built once per applied config, from the files it names), the
//! handshake before any spawn, and what the program learns of the session.
//!
//! The crypto provider is ring: it cross-builds for x86_64-pc-windows-gnu
//! with mingw's gcc alone, where aws-lc-rs also needs cmake and nasm.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{ProtocolVersion, RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::{ClientCert, ConfigError, Located, TlsSettings, TlsVersion};
use crate::conn_env::ConnEnv;

mod tickets;

/// Sessions a service remembers for resumption by session ID (TLS 1.2
/// clients without tickets); each entry is a few hundred bytes.
const SESSION_CACHE_ENTRIES: usize = 1024;

/// A TLS service's fixed part: its rustls config and handshake bounds.
pub struct Terminator {
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
}

impl fmt::Debug for Terminator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Terminator")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// Reads every certificate and key `settings` names and builds the server
/// config; every problem found is returned, each at the line naming the file.
pub fn build(settings: &TlsSettings) -> Result<Terminator, Vec<ConfigError>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut errors = Vec::new();
    let default = certified_key(&settings.cert, &settings.key, &provider, &mut errors);
    let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
    for sni in &settings.sni {
        let Some(key) = certified_key(&sni.cert, &sni.key, &provider, &mut errors) else {
            continue;
        };
        for name in &sni.names {
            match name.strip_prefix("*.") {
                Some(suffix) => wildcard.insert(suffix.to_string(), Arc::clone(&key)),
                None => exact.insert(name.clone(), Arc::clone(&key)),
            };
        }
    }
    let verifier = settings.client_ca.as_ref().and_then(|ca| {
        let roots = match read_certs(ca) {
            Ok(certs) => {
                let mut roots = RootCertStore::empty();
                let (_, bad) = roots.add_parsable_certificates(certs);
                if bad > 0 || roots.is_empty() {
                    errors.push(at(
                        ca,
                        "holds a certificate that is not a valid CA certificate",
                    ));
                    return None;
                }
                roots
            }
            Err(e) => {
                errors.push(e);
                return None;
            }
        };
        let builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
        let builder = match settings.client_cert {
            ClientCert::Required => builder,
            ClientCert::Optional => builder.allow_unauthenticated(),
        };
        match builder.build() {
            Ok(v) => Some(v),
            Err(e) => {
                errors.push(at(ca, format!("cannot verify clients with it: {e}")));
                None
            }
        }
    });
    let Some(default) = default else {
        return Err(errors);
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let resolver = SniResolver {
        default,
        exact,
        wildcard,
    };
    let versions: &[&rustls::SupportedProtocolVersion] = match settings.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let origin_error = |message: String| {
        vec![ConfigError {
            location: settings.origin.clone(),
            message,
        }]
    };
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| origin_error(format!("TLS: {e}")))?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = settings
        .alpn
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    // Stateless tickets under a key that rotates every few hours; the keys
    // live as long as this config, so a reload starts new ones.
    config.ticketer = Arc::new(tickets::Tickets::new().ok_or_else(|| {
        origin_error("TLS: cannot make a session ticket key: no randomness".into())
    })?);
    Ok(Terminator {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        handshake_timeout: Duration::from_secs(settings.handshake_timeout.into()),
    })
}

fn at(file: &Located<impl AsRef<Path>>, message: impl fmt::Display) -> ConfigError {
    ConfigError {
        location: file.at.clone(),
        message: format!("{}: {message}", file.value.as_ref().display()),
    }
}

/// A chain and its key, checked to belong together and to be valid now.
fn certified_key(
    cert: &Located<std::path::PathBuf>,
    key: &Located<std::path::PathBuf>,
    provider: &CryptoProvider,
    errors: &mut Vec<ConfigError>,
) -> Option<Arc<CertifiedKey>> {
    let chain = read_certs(cert).map_err(|e| errors.push(e)).ok();
    if let Some(leaf) = chain.as_ref().and_then(|c| c.first())
        && let Err(e) = leaf_valid_now(leaf)
    {
        errors.push(at(cert, e));
    }
    let key_der = read_key(key).map_err(|e| errors.push(e)).ok()?;
    let chain = chain?;
    match CertifiedKey::from_der(chain, key_der, provider) {
        Ok(k) => Some(Arc::new(k)),
        Err(rustls::Error::InconsistentKeys(_)) => {
            errors.push(at(
                key,
                format!(
                    "this key does not belong to the certificate {}",
                    cert.value.display()
                ),
            ));
            None
        }
        // rustls' message names the key type, never its bytes.
        Err(e) => {
            errors.push(at(key, format!("cannot use the private key: {e}")));
            None
        }
    }
}

fn read_certs(
    file: &Located<std::path::PathBuf>,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bytes = std::fs::read(&file.value).map_err(|e| at(file, format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| at(file, format!("is not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(at(
            file,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

/// The key's file must be private to its owner (like a password file);
/// messages never quote its content.
fn read_key(file: &Located<std::path::PathBuf>) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let mut bytes =
        std::fs::read(&file.value).map_err(|e| at(file, format!("cannot read: {e}")))?;
    let key = key_file_private(&file.value)
        .map_err(|e| at(file, e))
        .and_then(|()| {
            PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| {
                at(
                    file,
                    "holds no PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) that can be read",
                )
            })
        });
    // Best effort: do not leave the key's text in freed memory.
    bytes.iter_mut().for_each(|b| {
        // SAFETY: a volatile write of zero to a byte we own.
        unsafe { std::ptr::write_volatile(b, 0) }
    });
    key
}

/// A private key: as root, another user may not be able to change it (the
/// check a config file gets), and on Unix no other user may read it.
#[cfg(unix)]
fn key_file_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    crate::os::check_config_file(path)?;
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("cannot read: {e}"))?
        .permissions()
        .mode();
    if mode & 0o007 != 0 {
        return Err(format!(
            "a private key must not be readable or writable by other users (mode {:o}); chmod o-rwx it",
            mode & 0o777
        ));
    }
    Ok(())
}

/// As LocalSystem, a key another account could change is refused (the
/// check a password file gets).
#[cfg(not(unix))]
fn key_file_private(path: &Path) -> Result<(), String> {
    crate::os::check_password_file(path)
}

/// An expired or not-yet-valid leaf would fail every handshake: say so now.
fn leaf_valid_now(leaf: &CertificateDer<'_>) -> Result<(), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("the first certificate cannot be read: {e}"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let validity = cert.validity();
    if now < validity.not_before.timestamp() {
        return Err(format!(
            "the certificate is not valid before {}",
            validity.not_before
        ));
    }
    if now > validity.not_after.timestamp() {
        return Err(format!("the certificate expired on {}", validity.not_after));
    }
    Ok(())
}

/// Picks the certificate by the client's SNI: an exact name, then a
/// wildcard for the first label, then the service's own certificate.
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by what follows `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello.server_name() {
            // rustls hands over the name lower-cased and validated.
            if let Some(k) = self.exact.get(name) {
                return Some(Arc::clone(k));
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(k) = self.wildcard.get(parent)
            {
                return Some(Arc::clone(k));
            }
        }
        Some(Arc::clone(&self.default))
    }
}

/// Why a handshake did not complete, as a short class for the rate-limited
/// log (one line per class and source per window) and the full text.
#[derive(Debug)]
pub struct HandshakeFailure {
    pub class: &'static str,
    pub detail: String,
}

impl Terminator {
    /// The handshake, within `handshake_timeout`; the session and the
    /// variables the program gets.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> Result<(TlsStream<TcpStream>, ConnEnv), HandshakeFailure> {
        // No queue: a handshake waits for its client only, never for other
        // handshakes, so silent clients cannot hold back a real one. What
        // bounds them is admission (each holds its slot) and this deadline.
        let work = async {
            first_record_in(&stream).await;
            self.acceptor.accept(stream).await
        };
        match tokio::time::timeout(self.handshake_timeout, work).await {
            Err(_) => Err(HandshakeFailure {
                class: "timed out",
                detail: format!(
                    "no complete handshake within {} s",
                    self.handshake_timeout.as_secs()
                ),
            }),
            Ok(Err(e)) => Err(failure(&e)),
            Ok(Ok(tls)) => {
                let env = session_env(tls.get_ref().1);
                Ok((tls, env))
            }
        }
    }
}

/// A TLS record's header: content type, version, length.
const RECORD_HEADER: usize = 5;

/// The longest plaintext record (RFC 8446, 5.1).
const MAX_PLAINTEXT: usize = 16384;

/// Returns once the client's first record is all in, or what came is not
/// a handshake record (then the handshake says why at once). With
/// SO_RCVLOWAT a client trickling its hello a byte at a time (a slowloris)
/// wakes us twice, not once a byte, before the deadline cuts it.
async fn first_record_in(stream: &TcpStream) {
    use crate::os::{WAKE_AFTER_WORKS, wake_after};
    if !WAKE_AFTER_WORKS || wake_after(stream, RECORD_HEADER).is_err() {
        return;
    }
    let mut head = [0u8; RECORD_HEADER];
    let whole = match stream.peek(&mut head).await {
        // 22: handshake; major version 3 (SSL 3.0 to TLS 1.3).
        Ok(RECORD_HEADER) if head[0] == 22 && head[1] == 3 => {
            usize::from(u16::from_be_bytes([head[3], head[4]]))
        }
        _ => 0,
    };
    // Longer than a plaintext record may be: refused as soon as read.
    let whole = if whole <= MAX_PLAINTEXT {
        RECORD_HEADER + whole
    } else {
        0
    };
    if whole > RECORD_HEADER {
        // Forget the readiness the header brought, then raise the mark:
        // the kernel signals at once if the record is already in.
        let _ = stream.try_io(tokio::io::Interest::READABLE, || {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
        if wake_after(stream, whole).is_ok() {
            let _ = stream.readable().await;
        }
    }
    let _ = wake_after(stream, 1);
}

/// Whether the session was resumed (a ticket or a session ID), not new.
pub fn resumed(session: &TlsStream<TcpStream>) -> bool {
    session.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
}

fn failure(e: &io::Error) -> HandshakeFailure {
    let detail = e.to_string();
    let class = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::NoCertificatesPresented) => "no client certificate",
        Some(rustls::Error::InvalidCertificate(_)) => "client certificate refused",
        Some(rustls::Error::PeerIncompatible(_)) => "client incompatible",
        Some(rustls::Error::AlertReceived(_)) => "client sent an alert",
        Some(rustls::Error::InvalidMessage(_)) => "not TLS or malformed",
        Some(_) => "TLS error",
        None => match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe => "client closed",
            _ => "I/O error",
        },
    };
    HandshakeFailure { class, detail }
}

/// s6-tlsserver's variable names (and stunnel's SSL_CLIENT_DN and
/// SSL_CLIENT_I_DN); names are OpenSSL's one-line form, `/C=FR/CN=x`.
pub fn session_env(conn: &ServerConnection) -> ConnEnv {
    let mut env = ConnEnv::with_capacity(10);
    let protocol = match conn.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "unknown",
    };
    env.push("SSL_PROTOCOL", protocol);
    if let Some(suite) = conn.negotiated_cipher_suite() {
        let name = suite
            .suite()
            .as_str()
            .map_or_else(|| format!("{:?}", suite.suite()), |s| s.to_string());
        env.push("SSL_CIPHER", &name);
    }
    if let Some(sni) = conn.server_name() {
        env.push("SSL_TLS_SNI_SERVERNAME", sni);
    }
    if let Some(alpn) = conn.alpn_protocol() {
        env.push("SSL_ALPN_PROTOCOL", &printable(alpn));
    }
    if let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) {
        peer_env(&mut env, leaf);
    }
    env
}

/// The client certificate's variables.
fn peer_env(env: &mut ConnEnv, leaf: &CertificateDer<'_>) {
    let digest = ring::digest::digest(&ring::digest::SHA256, leaf);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    env.push("SSL_PEER_CERT_HASH", &format!("SHA256:{hex}"));
    // The chain was verified; a parse failure here only loses names.
    if let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) {
        let subject = one_line(cert.subject());
        env.push("SSL_PEER_CERT_SUBJECT", &subject);
        env.push("SSL_CLIENT_DN", &subject);
        env.push("SSL_CLIENT_I_DN", &one_line(cert.issuer()));
        if let Some(cn) = cert
            .subject()
            .iter_common_name()
            .last()
            .and_then(|cn| cn.as_str().ok())
        {
            env.push("SSL_PEER_CERT_CN", &printable(cn.as_bytes()));
        }
    }
}

/// `/C=FR/O=Example/CN=name`: OpenSSL's X509_NAME_oneline.
fn one_line(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let mut out = String::new();
    for rdn in name.iter() {
        for atv in rdn.iter() {
            let key = x509_parser::objects::oid2abbrev(atv.attr_type(), registry)
                .map_or_else(|_| atv.attr_type().to_id_string(), |s| s.to_string());
            let value = atv.as_str().map_or_else(
                |_| printable(atv.attr_value().data),
                |s| printable(s.as_bytes()),
            );
            out.push('/');
            out.push_str(&key);
            out.push('=');
            out.push_str(&value);
        }
    }
    out
}

/// Printable ASCII as is; any other byte as `\xNN`, so a value can
/// neither hide control characters nor hold a NUL.
fn printable(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_what_could_hide_or_break_a_value() {
        assert_eq!(printable(b"h2"), "h2");
        assert_eq!(printable(b"a\nb\0c\\d\xff"), "a\\x0ab\\x00c\\x5cd\\xff");
    }

    #[test]
    fn handshake_failures_are_classed_by_rustls_reason() {
        let tls = |e: rustls::Error| failure(&io::Error::new(io::ErrorKind::InvalidData, e)).class;
        assert_eq!(
            tls(rustls::Error::NoCertificatesPresented),
            "no client certificate"
        );
        assert_eq!(
            tls(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            )),
            "client certificate refused"
        );
        assert_eq!(
            failure(&io::ErrorKind::UnexpectedEof.into()).class,
            "client closed"
        );
    }
}
