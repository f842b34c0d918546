//! `[service.tls]` and `[[service.tls.sni]]` in the extended format.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;

use toml::de::DeTable;

use super::{Report, Value};
use crate::config::{
    ClientCert, DEFAULT_HANDSHAKE_TIMEOUT, Located, SniCert, TlsSettings, TlsVersion,
};

const TLS_KEYS: &[&str] = &[
    "cert",
    "key",
    "client_ca",
    "client_cert",
    "alpn",
    "min_version",
    "handshake_timeout",
    "sni",
];

const SNI_KEYS: &[&str] = &["names", "cert", "key"];

/// The longest handshake_timeout: a handshake is a few round trips.
const MAX_HANDSHAKE_TIMEOUT: i64 = 3600;

impl Report<'_> {
    /// `[service.tls]`; `None` once its errors are reported.
    pub(super) fn tls(&mut self, v: &Value) -> Option<TlsSettings> {
        let Some(table) = v.get_ref().as_table() else {
            self.wrong_type("tls", "a table ([service.tls])", v);
            return None;
        };
        let errors_before = self.errors.len();
        let keys = self.known_keys(table, TLS_KEYS, "[service.tls]");
        let get = |k: &str| keys.get(k).copied();

        let cert = self.required_path(get("cert"), "cert", v.span(), "[service.tls]");
        let key = self.required_path(get("key"), "key", v.span(), "[service.tls]");
        let client_ca = get("client_ca").and_then(|v| self.path("client_ca", v));
        let client_cert = match get("client_cert") {
            Some(c) => {
                if get("client_ca").is_none() {
                    self.at(
                        c.span(),
                        "`client_cert` needs `client_ca`: the CAs a client certificate is verified against",
                    );
                }
                let choices = [
                    ("required", ClientCert::Required),
                    ("optional", ClientCert::Optional),
                ];
                self.choice("client_cert", c, &choices)
            }
            None => Some(ClientCert::Required),
        };
        let alpn = match get("alpn") {
            Some(a) => self.alpn(a),
            None => Some(Vec::new()),
        };
        let min_version = match get("min_version") {
            Some(m) => {
                let choices = [("1.2", TlsVersion::V1_2), ("1.3", TlsVersion::V1_3)];
                self.choice("min_version", m, &choices)
            }
            None => Some(TlsVersion::V1_2),
        };
        let handshake_timeout = match get("handshake_timeout") {
            Some(t) => self
                .integer("handshake_timeout", t, 1..=MAX_HANDSHAKE_TIMEOUT)
                .map(|n| n as u32),
            None => Some(DEFAULT_HANDSHAKE_TIMEOUT),
        };
        let sni = match get("sni") {
            Some(s) => self.sni(s),
            None => Some(Vec::new()),
        };
        if self.errors.len() != errors_before {
            return None;
        }
        Some(TlsSettings {
            origin: self.location(&v.span()),
            cert: cert?,
            key: key?,
            client_ca,
            client_cert: client_cert?,
            alpn: alpn?,
            min_version: min_version?,
            handshake_timeout: handshake_timeout?,
            sni: sni?,
        })
    }

    /// The table's keys; unknown ones are errors.
    fn known_keys<'t>(
        &mut self,
        table: &'t DeTable,
        known: &[&str],
        what: &str,
    ) -> BTreeMap<&'t str, &'t Value<'t>> {
        let mut keys = BTreeMap::new();
        for (key, value) in table {
            let name: &str = key.get_ref().as_ref();
            if known.contains(&name) {
                keys.insert(name, value);
            } else {
                let hint = self.suggest(name, known);
                self.at(key.span(), format!("unknown key `{name}` in {what}{hint}"));
            }
        }
        keys
    }

    fn path(&mut self, key: &str, v: &Value) -> Option<Located<PathBuf>> {
        let s = self.nonempty_string(key, v)?;
        Some(Located {
            value: PathBuf::from(s),
            at: self.location(&v.span()),
        })
    }

    fn required_path(
        &mut self,
        v: Option<&Value>,
        key: &str,
        table: Range<usize>,
        what: &str,
    ) -> Option<Located<PathBuf>> {
        match v {
            Some(v) => self.path(key, v),
            None => {
                self.at(table, format!("{what} has no `{key}`"));
                None
            }
        }
    }

    fn alpn(&mut self, v: &Value) -> Option<Vec<String>> {
        let items = self.strings("alpn", v)?;
        let mut out: Vec<String> = Vec::new();
        let mut ok = true;
        for (name, span) in items {
            if name.is_empty() || name.len() > 255 {
                self.at(span, "`alpn`: a protocol name is 1 to 255 bytes");
                ok = false;
            } else if out.iter().any(|n| n == name) {
                self.at(span, format!("`alpn` lists {name:?} twice"));
                ok = false;
            } else {
                out.push(name.to_string());
            }
        }
        ok.then_some(out)
    }

    /// `[[service.tls.sni]]`: every name once across all of them.
    fn sni(&mut self, v: &Value) -> Option<Vec<SniCert>> {
        let Some(items) = v.get_ref().as_array() else {
            self.at(
                v.span(),
                "`sni` must be an array of tables: write each as [[service.tls.sni]]",
            );
            return None;
        };
        let mut out = Vec::new();
        let mut seen: Vec<(String, String)> = Vec::new();
        let mut ok = true;
        for item in items.iter() {
            let Some(table) = item.get_ref().as_table() else {
                self.wrong_type("sni", "an array of tables", item);
                ok = false;
                continue;
            };
            let errors_before = self.errors.len();
            let keys = self.known_keys(table, SNI_KEYS, "[[service.tls.sni]]");
            let get = |k: &str| keys.get(k).copied();
            let what = "[[service.tls.sni]]";
            let cert = self.required_path(get("cert"), "cert", item.span(), what);
            let key = self.required_path(get("key"), "key", item.span(), what);
            let mut names = Vec::new();
            match get("names") {
                None => self.at(item.span(), format!("{what} has no `names`")),
                Some(n) => {
                    let list = self.strings("names", n).unwrap_or_default();
                    if list.is_empty() && n.get_ref().as_array().is_some() {
                        self.at(n.span(), "`names` is empty: list the server names");
                    }
                    for (name, span) in list {
                        let lower = name.to_ascii_lowercase();
                        if !is_server_name(&lower) {
                            self.at(
                                span,
                                format!(
                                    "`names`: {name:?} is not a DNS name (a wildcard is only `*.` before a name)"
                                ),
                            );
                        } else if let Some((_, first)) = seen.iter().find(|(n, _)| *n == lower) {
                            let first = first.clone();
                            self.at(
                                span,
                                format!("server name {lower:?} is already given at {first}"),
                            );
                        } else {
                            seen.push((lower.clone(), self.location(&span)));
                            names.push(lower);
                        }
                    }
                }
            }
            if self.errors.len() != errors_before {
                ok = false;
                continue;
            }
            if let (Some(cert), Some(key)) = (cert, key) {
                out.push(SniCert {
                    origin: self.location(&item.span()),
                    names,
                    cert,
                    key,
                });
            }
        }
        ok.then_some(out)
    }
}

/// A lower-case DNS name, or `*.` and one: what a client's SNI can match.
fn is_server_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use crate::config::{self, ClientCert, Config, TlsVersion};
    use std::path::Path;

    fn parse(text: &str) -> Result<Config, Vec<String>> {
        config::parse(Path::new("t.toml"), text.as_bytes())
            .map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
    }

    const HEAD: &str = "[[service]]\nport = 8443\ncommand = [\"/bin/cat\"]\n";

    #[test]
    fn tls_table_is_read_with_defaults_and_lines() {
        let c = parse(&format!(
            "{HEAD}[service.tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n"
        ))
        .unwrap();
        let t = c.services[0].tls.as_ref().unwrap();
        assert_eq!(t.cert.value, Path::new("/c.pem"));
        assert_eq!(t.cert.at, "t.toml:5");
        assert_eq!(t.key.at, "t.toml:6");
        assert_eq!(t.min_version, TlsVersion::V1_2);
        assert_eq!(t.handshake_timeout, 10);
        assert_eq!(t.client_cert, ClientCert::Required);
        assert!(t.alpn.is_empty() && t.sni.is_empty() && t.client_ca.is_none());
    }

    #[test]
    fn every_tls_key_is_read() {
        let c = parse(&format!(
            "{HEAD}[service.tls]\ncert = \"/c\"\nkey = \"/k\"\nclient_ca = \"/ca\"\nclient_cert = \"optional\"\nalpn = [\"h2\", \"http/1.1\"]\nmin_version = \"1.3\"\nhandshake_timeout = 3\n[[service.tls.sni]]\nnames = [\"B.example.org\", \"*.c.example.org\"]\ncert = \"/b\"\nkey = \"/bk\"\n"
        ))
        .unwrap();
        let t = c.services[0].tls.as_ref().unwrap();
        assert_eq!(t.client_ca.as_ref().unwrap().at, "t.toml:7");
        assert_eq!(t.client_cert, ClientCert::Optional);
        assert_eq!(t.alpn, ["h2", "http/1.1"]);
        assert_eq!(t.min_version, TlsVersion::V1_3);
        assert_eq!(t.handshake_timeout, 3);
        assert_eq!(t.sni.len(), 1);
        assert_eq!(t.sni[0].names, ["b.example.org", "*.c.example.org"]);
        assert_eq!(t.sni[0].key.at, "t.toml:15");
    }

    #[test]
    fn tls_errors_are_on_their_lines() {
        let cases = [
            ("[service.tls]\nkey = \"/k\"\n", "t.toml:4", "has no `cert`"),
            (
                "[service.tls]\ncert = \"/c\"\nkey = \"/k\"\nciphers = 1\n",
                "t.toml:7",
                "unknown key `ciphers`",
            ),
            (
                "[service.tls]\ncert = \"/c\"\nkey = \"/k\"\nmin_version = \"1.1\"\n",
                "t.toml:7",
                "\"1.2\", \"1.3\"",
            ),
            (
                "[service.tls]\ncert = \"/c\"\nkey = \"/k\"\nhandshake_timeout = 0\n",
                "t.toml:7",
                "from 1 to 3600",
            ),
            (
                "[service.tls]\ncert = \"/c\"\nkey = \"/k\"\nclient_cert = \"optional\"\n",
                "t.toml:7",
                "needs `client_ca`",
            ),
            (
                "[service.tls]\ncert = \"/c\"\nkey = \"/k\"\nalpn = [\"h2\", \"h2\"]\n",
                "t.toml:7",
                "twice",
            ),
            (
                "[service.tls]\ncert = \"/c\"\nkey = \"/k\"\n[[service.tls.sni]]\nnames = [\"a.org\"]\ncert = \"/a\"\nkey = \"/a\"\n[[service.tls.sni]]\nnames = [\"b.org\", \"A.org\"]\ncert = \"/b\"\nkey = \"/b\"\n",
                "t.toml:12",
                "\"a.org\" is already given at t.toml:8",
            ),
            (
                "[service.tls]\ncert = \"/c\"\nkey = \"/k\"\n[[service.tls.sni]]\nnames = [\"a.*.org\"]\ncert = \"/a\"\nkey = \"/a\"\n",
                "t.toml:8",
                "is not a DNS name",
            ),
        ];
        for (extra, at, needle) in cases {
            let errors = parse(&format!("{HEAD}{extra}")).unwrap_err();
            assert!(
                errors
                    .iter()
                    .any(|e| e.starts_with(at) && e.contains(needle)),
                "{extra:?}: want {at} {needle:?}, got {errors:?}"
            );
        }
    }

    #[test]
    fn tls_refuses_udp_and_direct_handoff_and_takes_internal_tcp() {
        let tls = "[service.tls]\ncert = \"/c\"\nkey = \"/k\"\n";
        let udp = format!(
            "[[service]]\nport = 53\nprotocol = \"udp\"\nwait = true\ncommand = [\"/x\"]\n{tls}"
        );
        let e = parse(&udp).unwrap_err();
        assert!(
            e.iter()
                .any(|e| e.starts_with("t.toml:6") && e.contains("TCP services only")),
            "{e:?}"
        );
        // An internal service (echo, metrics) is served inside the session.
        let internal = format!("[[service]]\nport = 7\ninternal = \"echo\"\n{tls}");
        let cfg = parse(&internal).unwrap();
        assert!(cfg.services[0].tls.is_some());
        let direct = format!("{HEAD}handoff = \"direct\"\n{tls}");
        let e = parse(&direct).unwrap_err();
        assert!(
            e.iter()
                .any(|e| e.starts_with("t.toml:4") && e.contains("cannot go with `tls`")),
            "{e:?}"
        );
        let pipe = format!("{HEAD}handoff = \"pipe\"\n{tls}");
        assert!(parse(&pipe).is_ok());
    }
}
