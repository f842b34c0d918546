//! Service names to port numbers, as `/etc/services` gives them, for
//! inetd.conf and xinetd configs that name their services.
//!
//! The table is an input of the parsers (they stay pure); the caller loads
//! it from the system's file, or falls back to the well-known names built in.

use std::collections::HashMap;
use std::path::PathBuf;

use super::Protocol;

/// Name or alias, per protocol → port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceTable {
    ports: HashMap<(String, Protocol), u16>,
}

/// The names inetd.conf files use most, for a system without a services
/// file (the IANA assignments; both protocols unless noted).
const BUILTIN: &[(&str, u16)] = &[
    ("tcpmux", 1),
    ("echo", 7),
    ("discard", 9),
    ("sink", 9),
    ("null", 9),
    ("systat", 11),
    ("users", 11),
    ("daytime", 13),
    ("netstat", 15),
    ("qotd", 17),
    ("quote", 17),
    ("chargen", 19),
    ("ttytst", 19),
    ("source", 19),
    ("ftp-data", 20),
    ("ftp", 21),
    ("ssh", 22),
    ("telnet", 23),
    ("smtp", 25),
    ("mail", 25),
    ("time", 37),
    ("timserver", 37),
    ("whois", 43),
    ("nicname", 43),
    ("domain", 53),
    ("bootps", 67),
    ("bootpc", 68),
    ("tftp", 69),
    ("gopher", 70),
    ("finger", 79),
    ("http", 80),
    ("www", 80),
    ("kerberos", 88),
    ("pop3", 110),
    ("pop-3", 110),
    ("sunrpc", 111),
    ("portmapper", 111),
    ("auth", 113),
    ("ident", 113),
    ("authentication", 113),
    ("nntp", 119),
    ("readnews", 119),
    ("ntp", 123),
    ("netbios-ns", 137),
    ("netbios-dgm", 138),
    ("netbios-ssn", 139),
    ("imap2", 143),
    ("imap", 143),
    ("snmp", 161),
    ("snmp-trap", 162),
    ("xdmcp", 177),
    ("irc", 194),
    ("ldap", 389),
    ("https", 443),
    ("microsoft-ds", 445),
    ("exec", 512),
    ("biff", 512),
    ("comsat", 512),
    ("login", 513),
    ("who", 513),
    ("whod", 513),
    ("shell", 514),
    ("cmd", 514),
    ("syslog", 514),
    ("printer", 515),
    ("spooler", 515),
    ("talk", 517),
    ("ntalk", 518),
    ("uucp", 540),
    ("klogin", 543),
    ("kshell", 544),
    ("nntps", 563),
    ("ldaps", 636),
    ("rsync", 873),
    ("ftps-data", 989),
    ("ftps", 990),
    ("telnets", 992),
    ("imaps", 993),
    ("pop3s", 995),
    ("cvspserver", 2401),
    ("svn", 3690),
    ("git", 9418),
    ("swat", 901),
];

impl ServiceTable {
    /// The well-known names, for when no services file can be read.
    pub fn builtin() -> ServiceTable {
        let mut t = ServiceTable::default();
        for &(name, port) in BUILTIN {
            for p in [Protocol::Tcp, Protocol::Udp] {
                t.ports.insert((name.to_string(), p), port);
            }
        }
        t
    }

    /// Parses the text of a services file: `name port/proto [aliases...]`,
    /// `#` comments. Lines it cannot read are skipped, as libc does.
    pub fn parse(text: &str) -> ServiceTable {
        let mut t = ServiceTable::default();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let (Some(name), Some(port_proto)) = (words.next(), words.next()) else {
                continue;
            };
            let Some((port, proto)) = port_proto.split_once('/') else {
                continue;
            };
            let Ok(port @ 1..) = port.parse::<u16>() else {
                continue;
            };
            let proto = match proto {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                _ => continue,
            };
            for n in std::iter::once(name).chain(words) {
                // The first entry wins, as getservbyname finds it.
                t.ports.entry((n.to_string(), proto)).or_insert(port);
            }
        }
        t
    }

    /// The system's services file, or the built-in table when it is missing
    /// or empty. Unix: `/etc/services`; Windows:
    /// `%SystemRoot%\System32\drivers\etc\services`.
    pub fn system() -> ServiceTable {
        let path = if cfg!(windows) {
            let root = std::env::var_os("SystemRoot").unwrap_or_else(|| "C:\\Windows".into());
            PathBuf::from(root).join("System32\\drivers\\etc\\services")
        } else {
            PathBuf::from("/etc/services")
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let t = ServiceTable::parse(&String::from_utf8_lossy(&bytes));
                if t.ports.is_empty() {
                    ServiceTable::builtin()
                } else {
                    t
                }
            }
            Err(_) => ServiceTable::builtin(),
        }
    }

    /// `name` (official or alias) for `protocol`, or a decimal number.
    pub fn port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
            return name.parse::<u16>().ok().filter(|&p| p != 0);
        }
        self.ports.get(&(name.to_string(), protocol)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run under Wine (`scripts/windows-cargo.sh test`): `system()` reads
    /// the services file where Windows keeps it. The path is spelled out
    /// here, not taken from `system()`, and the entry appended is in no
    /// built-in table, so only reading that very file finds it.
    #[cfg(windows)]
    #[test]
    fn windows_reads_the_services_file_under_system_root() {
        use std::io::Write;
        let file = std::path::Path::new(r"C:\windows\system32\drivers\etc\services");
        let before = std::fs::read(file).expect("the Windows services file (Wine prefix)");
        let name = format!("wininetd-test-{}", std::process::id());
        let mut f = std::fs::OpenOptions::new().append(true).open(file).unwrap();
        write!(f, "\r\n{name}\t\t48879/tcp\t\t# wininetd test\r\n").unwrap();
        drop(f);
        let table = ServiceTable::system();
        std::fs::write(file, &before).unwrap();
        assert_eq!(table.port(&name, Protocol::Tcp), Some(48879));
        assert_eq!(ServiceTable::builtin().port(&name, Protocol::Tcp), None);
        // And the file's own entries, as Windows ships them.
        assert_eq!(table.port("echo", Protocol::Udp), Some(7));
    }

    #[test]
    fn names_aliases_and_protocols_are_read() {
        let t = ServiceTable::parse(
            "# comment\nftp\t\t21/tcp\nfsp\t\t21/udp\t\tfspd\nsmtp 25/tcp mail # x\nbad line\nx 0/tcp\ny 7/sctp\n",
        );
        assert_eq!(t.port("ftp", Protocol::Tcp), Some(21));
        assert_eq!(t.port("ftp", Protocol::Udp), None);
        assert_eq!(t.port("fspd", Protocol::Udp), Some(21));
        assert_eq!(t.port("mail", Protocol::Tcp), Some(25));
        assert_eq!(t.port("x", Protocol::Tcp), None);
        assert_eq!(t.port("y", Protocol::Tcp), None);
    }

    #[test]
    fn numbers_are_ports_and_zero_or_too_big_is_not() {
        let t = ServiceTable::default();
        assert_eq!(t.port("8080", Protocol::Tcp), Some(8080));
        assert_eq!(t.port("0", Protocol::Tcp), None);
        assert_eq!(t.port("65536", Protocol::Udp), None);
    }

    #[test]
    fn the_builtin_table_has_the_internal_services() {
        let t = ServiceTable::builtin();
        for (name, port) in [
            ("echo", 7),
            ("discard", 9),
            ("daytime", 13),
            ("chargen", 19),
            ("time", 37),
        ] {
            assert_eq!(t.port(name, Protocol::Tcp), Some(port));
            assert_eq!(t.port(name, Protocol::Udp), Some(port));
        }
    }

    #[cfg(unix)]
    #[test]
    fn debian_services_file_agrees_with_the_builtin_table() {
        let text = std::fs::read_to_string("/etc/services")
            .expect("/etc/services (Debian package netbase) must exist");
        let system = ServiceTable::parse(&text);
        let mut compared = 0;
        for &(name, port) in BUILTIN {
            if let Some(p) = system.port(name, Protocol::Tcp) {
                assert_eq!(p, port, "{name}");
                compared += 1;
            }
        }
        assert!(
            compared > 40,
            "only {compared} names found in /etc/services"
        );
    }
}
