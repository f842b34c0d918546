//! `--tls-ca`: the rate, stream and hold modes speak TLS 1.3 (rustls, ring)
//! on top of TCP, a new full handshake per connection (no resumption), and
//! `tls-handshake` measures what one full handshake costs a server alone,
//! in memory, without a network or a process.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rustls::client::Resumption;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A byte stream to the server: plain TCP or TLS over it.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// What a TLS client needs: the CA to trust and the name to ask for.
#[derive(Clone)]
pub struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    pub fn load(ca: &Path, name: &str) -> Result<Tls, String> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
            let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
            roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
        }
        let mut cfg = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Every connection pays a full handshake, as a new client would.
        cfg.resumption = Resumption::disabled();
        let name = ServerName::try_from(name.to_string()).map_err(|e| format!("{name}: {e}"))?;
        Ok(Tls {
            connector: TlsConnector::from(Arc::new(cfg)),
            name,
        })
    }
}

/// Connects to `target`, writes `header` in clear (a PROXY header), then
/// the TLS handshake when `tls` is given.
pub async fn connect(
    target: SocketAddr,
    header: impl FnOnce(SocketAddr) -> Vec<u8>,
    tls: Option<&Tls>,
) -> io::Result<Box<dyn Stream>> {
    connect_from(target, None, header, tls).await
}

/// [`connect`] from the loopback address `source` (any port): one source
/// has ~28k ephemeral ports, so many held connections need several.
pub async fn connect_from(
    target: SocketAddr,
    source: Option<IpAddr>,
    header: impl FnOnce(SocketAddr) -> Vec<u8>,
    tls: Option<&Tls>,
) -> io::Result<Box<dyn Stream>> {
    use tokio::io::AsyncWriteExt;
    let mut tcp = match source {
        None => TcpStream::connect(target).await?,
        Some(ip) => {
            let sock = if ip.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            sock.bind(SocketAddr::new(ip, 0))?;
            sock.connect(target).await?
        }
    };
    let h = header(tcp.local_addr()?);
    if !h.is_empty() {
        tcp.write_all(&h).await?;
    }
    match tls {
        None => Ok(Box::new(tcp)),
        Some(t) => Ok(Box::new(t.connector.connect(t.name.clone(), tcp).await?)),
    }
}

/// `n` full TLS 1.3 handshakes between a rustls client and server in
/// memory; the server's share of the CPU time is what a TLS super-server
/// cannot avoid per connection.
pub fn handshake_cost(
    cert: &Path,
    key: &Path,
    ca: &Path,
    n: usize,
) -> Result<(Map<String, Value>, String), String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let server = Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| e.to_string())?,
    );
    let Tls {
        connector, name, ..
    } = Tls::load(ca, "localhost")?;
    let client = Arc::clone(connector.config());
    let mut server_ns = 0u128;
    let t0 = Instant::now();
    for _ in 0..n {
        let mut c =
            ClientConnection::new(Arc::clone(&client), name.clone()).map_err(|e| e.to_string())?;
        let mut s = ServerConnection::new(Arc::clone(&server)).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        for _ in 0..16 {
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
            buf.clear();
            c.write_tls(&mut buf).map_err(|e| e.to_string())?;
            let t = Instant::now();
            s.read_tls(&mut &buf[..]).map_err(|e| e.to_string())?;
            s.process_new_packets().map_err(|e| e.to_string())?;
            buf.clear();
            s.write_tls(&mut buf).map_err(|e| e.to_string())?;
            server_ns += t.elapsed().as_nanos();
            c.read_tls(&mut &buf[..]).map_err(|e| e.to_string())?;
            c.process_new_packets().map_err(|e| e.to_string())?;
        }
        if c.is_handshaking() || s.is_handshaking() {
            return Err("a handshake did not complete".into());
        }
    }
    let total = t0.elapsed();
    let per = server_ns as f64 / n.max(1) as f64 / 1000.0;
    let mut m = Map::new();
    m.insert("handshakes".into(), json!(n));
    m.insert("server_us_per_handshake".into(), json!(per));
    m.insert(
        "client_and_server_us_per_handshake".into(),
        json!(total.as_nanos() as f64 / n.max(1) as f64 / 1000.0),
    );
    let human = format!(
        "tls-handshake: {n} full TLS 1.3 handshakes in memory, server side {per:.1} µs each"
    );
    Ok((m, human))
}
