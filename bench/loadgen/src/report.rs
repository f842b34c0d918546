//! The Markdown report: for each scenario and server the median over rounds
//! with min–max, and for the subject (wininetd) the ratio to the best peer.
//!
//! Ratios are taken round by round (subject in round r ÷ the best peer in
//! round r, the best peer being the one with the best median), and the
//! median and min–max of those per-round ratios is shown: rounds are
//! interleaved, so two figures of one round saw the same machine weather.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::Value;

use crate::stats::{Spread, spread};

/// Per-round values of one metric of one server: round -> value.
type Series = BTreeMap<u64, f64>;

#[derive(Default)]
struct Data {
    /// (server, metric) -> per-round values
    series: BTreeMap<(String, String), Series>,
    /// (server) -> sum of `failures` over all its lines
    failures: BTreeMap<String, u64>,
    rounds: BTreeSet<u64>,
    bad_lines: usize,
}

/// Metric names are "scenario.key"; e.g. "rate.conns_per_s".
fn load(text: &str) -> Data {
    let mut d = Data::default();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Ok(Value::Object(o)) = serde_json::from_str::<Value>(line) else {
            d.bad_lines += 1;
            continue;
        };
        let server = o.get("server").and_then(Value::as_str).unwrap_or("");
        let server = if server.is_empty() {
            if o.get("mode").and_then(Value::as_str) == Some("spawn-ceiling") {
                "machine"
            } else {
                "?"
            }
        } else {
            server
        };
        let round = o.get("round").and_then(Value::as_u64).unwrap_or(0);
        let scenario = o
            .get("scenario")
            .or_else(|| o.get("mode"))
            .and_then(Value::as_str)
            .unwrap_or("?");
        d.rounds.insert(round);
        *d.failures.entry(server.to_string()).or_default() +=
            o.get("failures").and_then(Value::as_u64).unwrap_or(0);
        for (k, v) in &o {
            if let Some(x) = v.as_f64()
                && k != "round"
            {
                d.series
                    .entry((server.to_string(), format!("{scenario}.{k}")))
                    .or_default()
                    .insert(round, x);
            }
        }
    }
    // Derived: rate as a fraction of the same round's spawn ceiling.
    if let Some(ceiling) = d
        .series
        .get(&("machine".into(), "spawn-ceiling.spawns_per_s".into()))
        .cloned()
    {
        let rates: Vec<(String, Series)> = d
            .series
            .iter()
            .filter(|((_, m), _)| m == "rate.conns_per_s")
            .map(|((s, _), v)| (s.clone(), v.clone()))
            .collect();
        for (server, rate) in rates {
            let frac: Series = rate
                .iter()
                .filter_map(|(r, v)| ceiling.get(r).filter(|c| **c > 0.0).map(|c| (*r, v / c)))
                .collect();
            d.series
                .insert((server, "rate.fraction_of_ceiling".into()), frac);
        }
    }
    d
}

#[derive(Clone, Copy)]
enum Target {
    None,
    /// subject ÷ reference must be at least this
    RatioAtLeast(f64),
    /// subject ÷ reference must be at most this
    RatioAtMost(f64),
    /// the subject's median must be at least this
    AtLeast(f64),
    /// the subject's median must be at most this
    AtMost(f64),
    /// the subject's worst (largest) round must be at most this
    WorstAtMost(f64),
    /// the median of per-round differences to the reference must be at most this
    DiffAtMost(f64),
}

enum Reference {
    /// the peer with the best median of the same metric
    BestPeer,
    /// the peer with the best median of another metric (e.g. internal echo vs cat)
    BestPeerOf(&'static str),
    /// another series of the subject (e.g. pipe mode vs direct): the one
    /// measured next to it (server name + suffix) when there is one, else
    /// the subject's own
    Subject(&'static str, &'static str),
    /// a named server's series of a metric (e.g. stunnel for TLS)
    Server(&'static str, &'static str),
    None,
}

struct RowSpec {
    label: &'static str,
    metric: &'static str,
    /// which server's series fills the subject column (default: the subject)
    subject_suffix: &'static str,
    show_peers: bool,
    higher_better: bool,
    reference: Reference,
    target: Target,
    target_text: &'static str,
}

const fn row(
    label: &'static str,
    metric: &'static str,
    higher_better: bool,
    target: Target,
    target_text: &'static str,
) -> RowSpec {
    RowSpec {
        label,
        metric,
        subject_suffix: "",
        show_peers: true,
        higher_better,
        reference: Reference::BestPeer,
        target,
        target_text,
    }
}

fn rows() -> Vec<RowSpec> {
    vec![
        row(
            "(a) rate: conns/s",
            "rate.conns_per_s",
            true,
            Target::RatioAtLeast(1.0),
            "≥ 1.0× best peer",
        ),
        RowSpec {
            reference: Reference::None,
            ..row(
                "(a÷e) rate ÷ spawn ceiling",
                "rate.fraction_of_ceiling",
                true,
                Target::AtLeast(0.95),
                "≥ 0.95",
            )
        },
        row(
            "(a) rate: latency p50, µs",
            "rate.p50_us",
            false,
            Target::None,
            "",
        ),
        row(
            "(a) rate: latency p90, µs",
            "rate.p90_us",
            false,
            Target::None,
            "",
        ),
        row(
            "(a) rate: latency p99, µs",
            "rate.p99_us",
            false,
            Target::RatioAtMost(0.8),
            "≤ 0.8× best peer",
        ),
        row(
            "(a) rate: latency max, µs",
            "rate.max_us",
            false,
            Target::None,
            "",
        ),
        row(
            "(d) own CPU, µs/conn",
            "rate.server_cpu_us_per_conn",
            false,
            Target::AtMost(25.0),
            "≤ 25 µs",
        ),
        row(
            "(b) stream 1 conn: MB/s",
            "stream.mb_per_s",
            true,
            Target::RatioAtLeast(0.95),
            "≥ 0.95× best peer",
        ),
        row(
            "(c) VmRSS fresh, before any connection, KiB",
            "start.server_rss_kib",
            false,
            Target::None,
            "",
        ),
        row(
            "(c) idle VmRSS before hold, KiB",
            "hold.server_rss_kib_before",
            false,
            Target::AtMost(3072.0),
            "≤ 3072 KiB",
        ),
        row(
            "(c) VmRSS while holding, KiB",
            "hold.server_rss_kib_during",
            false,
            Target::None,
            "",
        ),
        RowSpec {
            // a ratio to a peer's 0 B says nothing
            reference: Reference::None,
            ..row(
                "(c) VmRSS growth, bytes/held conn",
                "hold.rss_growth_bytes_per_conn",
                false,
                Target::WorstAtMost(128.0),
                "≤ 128 B, worst round",
            )
        },
        RowSpec {
            subject_suffix: "-iecho",
            show_peers: false,
            reference: Reference::BestPeerOf("rate.conns_per_s"),
            ..row(
                "(f) rate, internal echo: conns/s",
                "rate.conns_per_s",
                true,
                Target::None,
                "",
            )
        },
        RowSpec {
            subject_suffix: "-iecho",
            show_peers: false,
            reference: Reference::BestPeerOf("rate.p99_us"),
            ..row(
                "(f) rate, internal echo: p99, µs",
                "rate.p99_us",
                false,
                Target::None,
                "",
            )
        },
        RowSpec {
            subject_suffix: "-pipe",
            show_peers: false,
            reference: Reference::Subject("-direct", "stream.mb_per_s"),
            ..row(
                "(f) stream, pipe handoff: MB/s (÷ direct)",
                "stream.mb_per_s",
                true,
                Target::RatioAtLeast(0.8),
                "≥ 0.8× direct",
            )
        },
        RowSpec {
            subject_suffix: "-proxy",
            show_peers: false,
            reference: Reference::Subject("-noproxy", "rate.conns_per_s"),
            ..row(
                "(g) rate, PROXY v2 header: conns/s (÷ without)",
                "rate.conns_per_s",
                true,
                Target::RatioAtLeast(0.97),
                "≥ 0.97× without",
            )
        },
        RowSpec {
            subject_suffix: "-proxy",
            show_peers: false,
            reference: Reference::Subject("-noproxy", "rate.server_cpu_us_per_conn"),
            ..row(
                "(g) own CPU, PROXY v2 header: µs/conn",
                "rate.server_cpu_us_per_conn",
                false,
                Target::DiffAtMost(3.0),
                "≤ without + 3 µs",
            )
        },
        tls_row(
            "(h) TLS rate: conns/s (÷ stunnel)",
            "rate.conns_per_s",
            true,
            Target::RatioAtLeast(1.2),
            "≥ 1.2× stunnel",
        ),
        tls_row(
            "(h) TLS rate: latency p99, µs (÷ stunnel)",
            "rate.p99_us",
            false,
            Target::RatioAtMost(0.8),
            "≤ 0.8× stunnel",
        ),
        tls_row(
            "(h) TLS stream 1 conn: MB/s (÷ stunnel)",
            "stream.mb_per_s",
            true,
            Target::RatioAtLeast(1.0),
            "≥ 1.0× stunnel",
        ),
        tls_row(
            "(h) TLS VmRSS growth, bytes/held session (÷ stunnel)",
            "hold.rss_growth_bytes_per_conn",
            false,
            Target::RatioAtMost(0.5),
            "≤ 0.5× stunnel",
        ),
        tls_row(
            "(h) TLS own CPU, µs/conn (÷ stunnel)",
            "rate.server_cpu_us_per_conn",
            false,
            Target::None,
            "",
        ),
        RowSpec {
            subject_suffix: "-tls",
            show_peers: false,
            reference: Reference::Server("machine", "tls-handshake.server_us_per_handshake"),
            ..row(
                "(h) TLS own CPU, µs/conn (÷ one full handshake alone, server side)",
                "rate.server_cpu_us_per_conn",
                false,
                Target::None,
                "",
            )
        },
        RowSpec {
            subject_suffix: "-user",
            show_peers: false,
            reference: Reference::Subject("", "rate.conns_per_s"),
            ..row(
                "(i) rate, as another user: conns/s (÷ as its own)",
                "rate.conns_per_s",
                true,
                Target::None,
                "",
            )
        },
        RowSpec {
            subject_suffix: "-user",
            show_peers: false,
            reference: Reference::Subject("", "rate.server_cpu_us_per_conn"),
            ..row(
                "(i) as another user: own CPU, µs/conn (÷ as its own)",
                "rate.server_cpu_us_per_conn",
                false,
                Target::None,
                "",
            )
        },
    ]
}

/// A TLS row: wininetd's TLS service against stunnel (`exec = /bin/cat`).
const fn tls_row(
    label: &'static str,
    metric: &'static str,
    higher_better: bool,
    target: Target,
    target_text: &'static str,
) -> RowSpec {
    RowSpec {
        subject_suffix: "-tls",
        show_peers: false,
        reference: Reference::Server("stunnel", metric),
        ..row(label, metric, higher_better, target, target_text)
    }
}

fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn fmt_spread(s: Option<Spread>) -> String {
    match s {
        Some(s) if s.min == s.max => fmt_num(s.median),
        Some(s) => format!(
            "{} ({}–{})",
            fmt_num(s.median),
            fmt_num(s.min),
            fmt_num(s.max)
        ),
        None => "—".into(),
    }
}

fn fmt_ratio(s: Option<Spread>) -> String {
    match s {
        Some(s) if s.min == s.max => format!("{:.2}×", s.median),
        Some(s) => format!("{:.2}× ({:.2}–{:.2})", s.median, s.min, s.max),
        None => "—".into(),
    }
}

fn values(s: &Series) -> Vec<f64> {
    s.values().copied().collect()
}

/// Per-round ratio a/b over the rounds both have.
fn ratio_series(a: &Series, b: &Series) -> Vec<f64> {
    a.iter()
        .filter_map(|(r, x)| b.get(r).filter(|y| **y != 0.0).map(|y| x / y))
        .collect()
}

/// Per-round difference a − b over the rounds both have.
fn diff_series(a: &Series, b: &Series) -> Vec<f64> {
    a.iter()
        .filter_map(|(r, x)| b.get(r).map(|y| x - y))
        .collect()
}

/// The peer with the best median of `metric`, and its series.
fn best_peer<'a>(
    d: &'a Data,
    peers: &[String],
    metric: &str,
    higher: bool,
) -> Option<(&'a str, &'a Series)> {
    peers
        .iter()
        .filter_map(|p| {
            let (k, s) = d.series.get_key_value(&(p.clone(), metric.to_string()))?;
            Some((k.0.as_str(), s, spread(&values(s))?.median))
        })
        .reduce(|a, b| {
            let better = if higher { b.2 > a.2 } else { b.2 < a.2 };
            if better { b } else { a }
        })
        .map(|(n, s, _)| (n, s))
}

/// `targets = false` leaves out the target and met columns: targets are
/// judged on a release build on the bench machine, not on a smoke run.
pub fn render_with(text: &str, subject: &str, peers: &[String], targets: bool) -> String {
    let d = load(text);
    let mut out = String::new();
    let get = |server: &str, metric: &str| d.series.get(&(server.to_string(), metric.to_string()));

    let rounds: Vec<String> = d.rounds.iter().map(u64::to_string).collect();
    let _ = writeln!(
        out,
        "Medians over rounds {} (min–max in brackets); ratios are per round, then the median (min–max) of those.\n",
        rounds.join(", ")
    );
    if let Some(c) = get("machine", "spawn-ceiling.spawns_per_s") {
        let _ = writeln!(
            out,
            "**(e) spawn ceiling** (spawn /bin/cat, write the payload, read it back, reap): {} spawns/s\n",
            fmt_spread(spread(&values(c)))
        );
    } else {
        let _ = writeln!(out, "**(e) spawn ceiling**: not measured\n");
    }
    for (metric, what) in [
        (
            "spawn-event-loop.spawns_per_s",
            "The same loop on one thread with tokio::process (each vfork-style spawn blocks that thread until the child execs)",
        ),
        (
            "spawn-fork.spawns_per_s",
            "The same loop with fork+exec instead of posix_spawn, how the classic peers start children",
        ),
    ] {
        if let Some(c) = get("machine", metric) {
            let _ = writeln!(out, "{what}: {} spawns/s\n", fmt_spread(spread(&values(c))));
        }
    }

    let shown_peers: Vec<&String> = peers
        .iter()
        .filter(|p| d.series.keys().any(|(s, _)| s == *p))
        .collect();
    let _ = write!(out, "| scenario | {subject} |");
    for p in &shown_peers {
        let _ = write!(out, " {p} |");
    }
    if targets {
        let _ = writeln!(out, " best peer | {subject} ÷ best peer | target | met |");
    } else {
        let _ = writeln!(out, " best peer | {subject} ÷ best peer |");
    }
    let _ = write!(out, "|---|---:|");
    for _ in &shown_peers {
        let _ = write!(out, "---:|");
    }
    let _ = writeln!(
        out,
        "{}",
        if targets {
            "---|---:|---|---|"
        } else {
            "---|---:|"
        }
    );

    for spec in rows() {
        let subject_name = format!("{subject}{}", spec.subject_suffix);
        let subj = get(&subject_name, spec.metric);
        let peer_any = shown_peers.iter().any(|p| get(p, spec.metric).is_some());
        if subj.is_none() && (!spec.show_peers || !peer_any) {
            continue;
        }
        let subj_spread = subj.and_then(|s| spread(&values(s)));
        let _ = write!(out, "| {} | {} |", spec.label, fmt_spread(subj_spread));
        for p in &shown_peers {
            let cell = if spec.show_peers {
                fmt_spread(get(p, spec.metric).and_then(|s| spread(&values(s))))
            } else {
                "".into()
            };
            let _ = write!(out, " {cell} |");
        }
        let reference: Option<(String, &Series)> = match spec.reference {
            Reference::BestPeer => best_peer(&d, peers, spec.metric, spec.higher_better)
                .map(|(n, s)| (n.to_string(), s)),
            Reference::BestPeerOf(m) => {
                best_peer(&d, peers, m, spec.higher_better).map(|(n, s)| (n.to_string(), s))
            }
            Reference::Subject("", m) => {
                get(subject, m).map(|s| (format!("{subject} (a), same rounds"), s))
            }
            Reference::Subject(suffix, m) => get(&format!("{subject}{suffix}"), m)
                .map(|s| (format!("{subject} direct, measured alongside"), s))
                .or_else(|| get(subject, m).map(|s| (format!("{subject} direct"), s))),
            Reference::Server(name, m) => get(name, m).map(|s| (name.to_string(), s)),
            Reference::None => None,
        };
        let ratio = match (subj, &reference) {
            (Some(a), Some((_, b))) => spread(&ratio_series(a, b)),
            _ => None,
        };
        let ref_cell = match &reference {
            Some((name, s)) => format!(
                "{name}: {}",
                fmt_num(spread(&values(s)).map_or(f64::NAN, |x| x.median))
            ),
            None => "—".into(),
        };
        let met = match (spec.target, subj_spread, ratio) {
            (Target::None, _, _) => "",
            (Target::RatioAtLeast(t), _, Some(r)) => yes_no(r.median >= t),
            (Target::RatioAtMost(t), _, Some(r)) => yes_no(r.median <= t),
            (Target::AtLeast(t), Some(s), _) => yes_no(s.median >= t),
            (Target::AtMost(t), Some(s), _) => yes_no(s.median <= t),
            (Target::WorstAtMost(t), Some(s), _) => yes_no(s.max <= t),
            (Target::DiffAtMost(t), _, _) => match (subj, &reference) {
                (Some(a), Some((_, b))) => {
                    spread(&diff_series(a, b)).map_or("n/a", |d| yes_no(d.median <= t))
                }
                _ => "n/a",
            },
            _ => "n/a",
        };
        if targets {
            let _ = writeln!(
                out,
                " {ref_cell} | {} | {} | {met} |",
                fmt_ratio(ratio),
                spec.target_text
            );
        } else {
            let _ = writeln!(out, " {ref_cell} | {} |", fmt_ratio(ratio));
        }
    }

    let _ = write!(
        out,
        "| failures (all scenarios, all rounds) | {} |",
        fail_cell(&d, subject)
    );
    for p in &shown_peers {
        let _ = write!(out, " {} |", fail_cell(&d, p));
    }
    if targets {
        let _ = writeln!(
            out,
            " | | 0 | {} |",
            match d.failures.get(subject) {
                Some(0) => "yes",
                Some(_) => "no",
                None => "n/a",
            }
        );
    } else {
        let _ = writeln!(out, " | |");
    }
    let _ = writeln!(
        out,
        "\nOwn CPU: the super-server's process CPU clock (all its threads, children excluded) \
         over the rate run, per connection. VmRSS: /proc/PID/status of the super-server only; \
         growth = (during − before) ÷ held connections, and the allocator keeps freed memory, \
         so rounds after the first often show 0: the target is judged on the worst round."
    );
    if d.bad_lines > 0 {
        let _ = writeln!(
            out,
            "\n({} unreadable input lines were skipped)",
            d.bad_lines
        );
    }
    out
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn fail_cell(d: &Data, server: &str) -> String {
    d.failures.get(server).map_or("—".into(), |f| f.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(text: &str, subject: &str, peers: &[String]) -> String {
        render_with(text, subject, peers, true)
    }

    fn line(server: &str, round: u64, scenario: &str, fields: &str) -> String {
        format!(
            r#"{{"server":"{server}","round":{round},"scenario":"{scenario}","failures":0,{fields}}}"#
        )
    }

    fn sample() -> String {
        let mut l = Vec::new();
        for (r, (w, x, t, c)) in [
            (1, (1000.0, 800.0, 900.0, 1100.0)),
            (2, (1200.0, 600.0, 1000.0, 1250.0)),
            (3, (900.0, 700.0, 950.0, 1000.0)),
        ] {
            l.push(line(
                "wininetd",
                r,
                "rate",
                &format!(r#""conns_per_s":{w},"p99_us":{}"#, 5000.0 / w * 100.0),
            ));
            l.push(line(
                "xinetd",
                r,
                "rate",
                &format!(r#""conns_per_s":{x},"p99_us":{}"#, 5000.0 / x * 100.0),
            ));
            l.push(line(
                "tcpserver",
                r,
                "rate",
                &format!(r#""conns_per_s":{t},"p99_us":{}"#, 5000.0 / t * 100.0),
            ));
            l.push(format!(r#"{{"mode":"spawn-ceiling","round":{r},"scenario":"spawn-ceiling","spawns_per_s":{c},"failures":0}}"#));
        }
        l.join("\n")
    }

    #[test]
    fn rate_ratio_is_per_round_against_best_median_peer() {
        let out = render(
            &sample(),
            "wininetd",
            &["xinetd".into(), "tcpserver".into()],
        );
        let rate_row = out
            .lines()
            .find(|l| l.starts_with("| (a) rate: conns/s"))
            .unwrap();
        // tcpserver has the best median (950); per-round ratios are
        // 1000/900, 1200/1000, 900/950 -> median 1.11, min 0.95, max 1.20
        assert!(rate_row.contains("tcpserver: 950"), "{rate_row}");
        assert!(rate_row.contains("1.11× (0.95–1.20)"), "{rate_row}");
        assert!(rate_row.contains("| yes |"), "{rate_row}");
        // subject median with min–max
        assert!(rate_row.contains("| 1000 (900–1200) |"), "{rate_row}");
    }

    #[test]
    fn pipe_is_judged_against_the_direct_stream_measured_alongside_it() {
        let stream = |server: &str, r: u64, mbps: f64| {
            line(server, r, "stream", &format!(r#""mb_per_s":{mbps}"#))
        };
        let mut l = Vec::new();
        for (r, (own, paired, pipe)) in [
            (1, (2000.0, 1000.0, 850.0)),
            (2, (2000.0, 1200.0, 960.0)),
            (3, (2000.0, 1100.0, 990.0)),
        ] {
            l.push(stream("wininetd", r, own));
            l.push(stream("wininetd-direct", r, paired));
            l.push(stream("wininetd-pipe", r, pipe));
        }
        let row = |text: &str| {
            render(text, "wininetd", &["tcpserver".into()])
                .lines()
                .find(|l| l.starts_with("| (f) stream, pipe"))
                .unwrap()
                .to_string()
        };
        // Per round 0.85, 0.80, 0.90 against the paired series.
        let paired = row(&l.join("\n"));
        assert!(paired.contains("measured alongside: 1100"), "{paired}");
        assert!(paired.contains("0.85× (0.80–0.90)"), "{paired}");
        assert!(paired.contains("| yes |"), "{paired}");
        // Without it, the subject's own stream series is the reference.
        l.retain(|x| !x.contains("wininetd-direct"));
        let own = row(&l.join("\n"));
        assert!(own.contains("wininetd direct: 2000"), "{own}");
        assert!(own.contains("| no |"), "{own}");
    }

    #[test]
    fn tls_rows_are_judged_against_stunnel() {
        let rate = |server: &str, r: u64, cps: f64| {
            line(server, r, "rate", &format!(r#""conns_per_s":{cps}"#))
        };
        let l = [
            rate("wininetd-tls", 1, 1300.0),
            rate("stunnel", 1, 1000.0),
            rate("wininetd-tls", 2, 1100.0),
            rate("stunnel", 2, 1000.0),
        ];
        let out = render(&l.join("\n"), "wininetd", &[]);
        let row = out
            .lines()
            .find(|l| l.starts_with("| (h) TLS rate: conns/s"))
            .unwrap();
        // Ratios 1.3 and 1.1: median 1.2, met; and stunnel is the reference.
        assert!(
            row.contains("stunnel: 1000") && row.contains("| yes |"),
            "{row}"
        );
        let worse = l.join("\n").replace("1300", "1200");
        let out = render(&worse, "wininetd", &[]);
        let row = out
            .lines()
            .find(|l| l.starts_with("| (h) TLS rate: conns/s"))
            .unwrap();
        assert!(row.contains("| no |"), "{row}");
    }

    #[test]
    fn proxy_rate_is_judged_against_the_run_without_a_header() {
        let rate = |server: &str, r: u64, cps: f64, cpu: f64| {
            line(
                server,
                r,
                "rate",
                &format!(r#""conns_per_s":{cps},"server_cpu_us_per_conn":{cpu}"#),
            )
        };
        let mut l = Vec::new();
        for (r, (plain, proxied)) in [
            (1, ((1000.0, 20.0), (980.0, 22.0))),
            (2, ((900.0, 21.0), (880.0, 25.0))),
        ] {
            l.push(rate("wininetd-noproxy", r, plain.0, plain.1));
            l.push(rate("wininetd-proxy", r, proxied.0, proxied.1));
        }
        let out = render(&l.join("\n"), "wininetd", &[]);
        let row = |start: &str| {
            out.lines()
                .find(|l| l.starts_with(start))
                .unwrap()
                .to_string()
        };
        // conns/s per round 0.98 and 0.978: met.
        let cps = row("| (g) rate, PROXY v2 header: conns/s");
        assert!(cps.contains("| yes |"), "{cps}");
        // CPU differences 2 and 4 µs: median 3, met; one more µs is not.
        let cpu = row("| (g) own CPU, PROXY v2 header");
        assert!(cpu.contains("| yes |"), "{cpu}");
        let worse = l.join("\n").replace(
            r#""server_cpu_us_per_conn":25"#,
            r#""server_cpu_us_per_conn":27"#,
        );
        let out = render(&worse, "wininetd", &[]);
        let cpu = out
            .lines()
            .find(|l| l.starts_with("| (g) own CPU"))
            .unwrap();
        assert!(cpu.contains("| no |"), "{cpu}");
    }

    #[test]
    fn lower_is_better_picks_smallest_peer_and_fraction_of_ceiling_is_per_round() {
        let out = render(
            &sample(),
            "wininetd",
            &["xinetd".into(), "tcpserver".into()],
        );
        let p99 = out
            .lines()
            .find(|l| l.starts_with("| (a) rate: latency p99"))
            .unwrap();
        assert!(p99.contains("tcpserver:"), "{p99}");
        let frac = out.lines().find(|l| l.starts_with("| (a÷e)")).unwrap();
        // 1000/1100, 1200/1250, 900/1000 -> 0.91, 0.96, 0.90: median 0.91
        assert!(frac.contains("| 0.91 (0.90–0.96) |"), "{frac}");
        assert!(frac.contains("| no |"), "{frac}");
        assert!(out.contains("spawn ceiling** (spawn /bin/cat"));
        assert!(out.contains("1100 (1000–1250) spawns/s"));
    }

    #[test]
    fn without_targets_no_row_is_judged() {
        let out = render_with(&sample(), "wininetd", &["xinetd".into()], false);
        let header = out.lines().find(|l| l.starts_with("| scenario")).unwrap();
        assert!(
            !header.contains("target") && !header.contains("met"),
            "{header}"
        );
        for row in out.lines().filter(|l| l.starts_with("| (")) {
            assert!(
                !row.ends_with("| yes |") && !row.ends_with("| no |"),
                "{row}"
            );
            assert!(!row.contains('≥') && !row.contains('≤'), "{row}");
        }
        assert!(render(&sample(), "wininetd", &["xinetd".into()]).contains("| met |"));
    }

    #[test]
    fn rss_growth_target_is_judged_on_the_worst_round() {
        let text = [
            line("wininetd", 1, "hold", r#""rss_growth_bytes_per_conn":200"#),
            line("wininetd", 2, "hold", r#""rss_growth_bytes_per_conn":0"#),
            line("wininetd", 3, "hold", r#""rss_growth_bytes_per_conn":0"#),
        ]
        .join("\n");
        let out = render(&text, "wininetd", &[]);
        let row = out
            .lines()
            .find(|l| l.starts_with("| (c) VmRSS growth"))
            .unwrap();
        assert!(row.contains("| 0.00 (0.00–200) |"), "{row}");
        assert!(row.ends_with("| no |"), "{row}");
    }

    #[test]
    fn missing_subject_shows_dashes_and_bad_lines_are_counted() {
        let text = format!(
            "{}\nnot json\n",
            line("xinetd", 1, "rate", r#""conns_per_s":500"#)
        );
        let out = render(
            &text,
            "wininetd",
            &["xinetd".into(), "openbsd-inetd".into()],
        );
        let rate_row = out
            .lines()
            .find(|l| l.starts_with("| (a) rate: conns/s"))
            .unwrap();
        assert!(
            rate_row.starts_with("| (a) rate: conns/s | — | 500 |"),
            "{rate_row}"
        );
        // openbsd-inetd has no data: no column for it
        assert!(!out.contains("openbsd-inetd"));
        assert!(out.contains("1 unreadable input lines"));
    }
}
