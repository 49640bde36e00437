//! `/metrics` is valid Prometheus text (checked line by line, strictly) and its counters move
//! when musicians play.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use veza_sfu::sim::{SimOptions, SimParticipant};

const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Parses the Prometheus text exposition format (0.0.4), refusing anything off-format: bad
/// names, labels or values, a TYPE after its samples or twice, a family's samples split up,
/// histograms whose buckets are not cumulative or disagree with `_count`.
fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    check_name(name).map_err(at)?;
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at(format!("unknown type {kind}")));
                    }
                    if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                        return Err(at("second TYPE".into()));
                    }
                    if samples.iter().any(|s: &Sample| family(&s.name, &types) == name) {
                        return Err(at("TYPE after samples".into()));
                    }
                }
                (Some("HELP"), Some(name), _) => check_name(name).map_err(at)?,
                _ => {} // other comments are allowed
            }
            continue;
        }
        let sample = parse_sample(line).map_err(at)?;
        let fam = family(&sample.name, &types).to_owned();
        if current.as_deref() != Some(&fam) {
            if let Some(done) = current.replace(fam.clone()) {
                finished.insert(done);
            }
            if finished.contains(&fam) {
                return Err(at(format!("samples of {fam} are not together")));
            }
        }
        samples.push(sample);
    }
    for (name, kind) in &types {
        if kind == "histogram" {
            check_histogram(name, &samples)?;
        }
    }
    Ok(samples)
}

fn family<'a>(name: &'a str, types: &HashMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types.get(base).is_some_and(|k| k == "histogram" || k == "summary")
        {
            return base;
        }
    }
    name
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if ok { Ok(()) } else { Err(format!("bad metric name {name:?}")) }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=').ok_or("label without =")?;
            let key = &rest[..eq];
            let mut kc = key.chars();
            if !(kc.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && kc.all(|c| c.is_ascii_alphanumeric() || c == '_'))
            {
                return Err(format!("bad label name {key:?}"));
            }
            rest = rest[eq + 1..].strip_prefix('"').ok_or("label value not quoted")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next().ok_or("unterminated label value")? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((key.to_owned(), value));
            rest = &rest[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let mut fields = rest.strip_prefix(' ').ok_or("no space before the value")?.split(' ');
    let value = match fields.next().ok_or("no value")? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().map_err(|e| format!("bad value {v:?}: {e}"))?,
    };
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().map_err(|e| format!("bad timestamp {ts:?}: {e}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample { name: name.to_owned(), labels, value })
}

fn check_histogram(name: &str, samples: &[Sample]) -> Result<(), String> {
    let bucket = format!("{name}_bucket");
    let count = format!("{name}_count");
    let others =
        |s: &Sample| -> Vec<(String, String)> { s.labels.iter().filter(|(k, _)| k != "le").cloned().collect() };
    let series: HashSet<Vec<(String, String)>> = samples.iter().filter(|s| s.name == bucket).map(others).collect();
    for labels in series {
        let mut buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.name == bucket && others(s) == labels)
            .map(|s| {
                let le = s.labels.iter().find(|(k, _)| k == "le").map(|(_, v)| v.as_str()).unwrap_or("missing");
                let le = if le == "+Inf" { Ok(f64::INFINITY) } else { le.parse::<f64>() };
                le.map(|le| (le, s.value)).map_err(|_| format!("{name}: bad le"))
            })
            .collect::<Result<_, _>>()?;
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
            return Err(format!("{name}{labels:?}: buckets are not cumulative: {buckets:?}"));
        }
        let inf = buckets.last().filter(|b| b.0.is_infinite()).ok_or(format!("{name}{labels:?}: no +Inf bucket"))?;
        let total =
            samples.iter().find(|s| s.name == count && s.labels == labels).ok_or(format!("{name}: no _count"))?;
        if inf.1 != total.value {
            return Err(format!("{name}{labels:?}: +Inf bucket {} != _count {}", inf.1, total.value));
        }
    }
    Ok(())
}

/// Sum of a metric over the label sets that include `with`.
fn total(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| with.iter().all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v)))
        .map(|s| s.value)
        .sum()
}

async fn scrape(base: &str) -> Vec<Sample> {
    let resp = reqwest::get(format!("{base}/metrics")).await.expect("GET /metrics");
    assert_eq!(resp.status().as_u16(), 200);
    let content_type = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    assert!(content_type.as_deref().is_some_and(|t| t.starts_with("text/plain")), "{content_type:?}");
    let text = resp.text().await.unwrap();
    parse(&text).unwrap_or_else(|e| panic!("/metrics is not valid Prometheus text: {e}\n{text}"))
}

#[test]
fn the_checker_refuses_broken_text() {
    assert!(parse("# TYPE a counter\na 1\na{x=\"1\"} 2\n").is_ok());
    assert!(parse("a{x=\"1} 2\n").is_err(), "unterminated label");
    assert!(parse("a 1 2 3\n").is_err(), "trailing fields");
    assert!(parse("a one\n").is_err(), "bad value");
    assert!(parse("1a 1\n").is_err(), "bad name");
    assert!(parse("a 1\nb 1\na 2\n").is_err(), "family split");
    assert!(parse("a 1\n# TYPE a counter\n").is_err(), "TYPE after samples");
    let hist = "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n";
    assert!(parse(hist).is_err(), "buckets not cumulative");
    let hist = "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 2\n";
    assert!(parse(hist).is_err(), "+Inf != count");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_when_audio_flows() {
    let server = common::start().await;
    let base = server.http_url();
    let url = server.ws_url();
    let ana = SimParticipant::join(&url, &common::token("metered", "ana"), SimOptions::default()).await.unwrap();
    let ben = SimParticipant::join(&url, &common::token("metered", "ben"), SimOptions::default()).await.unwrap();
    let before = scrape(&base).await;

    ana.start_publishing();
    ben.start_publishing();
    ana.wait_for_packets(ben.id(), 100, WAIT).await.unwrap();
    ben.wait_for_packets(ana.id(), 100, WAIT).await.unwrap();
    ana.send_chat("one more time from the top").await.unwrap();
    ben.wait_chat(1, WAIT).await.unwrap();

    // Workers publish once a second and connection stats are sampled every two: re-scrape
    // until every counter has caught up (bounded), then check them all on one scrape.
    let moved = |name: &str, with: &[(&str, &str)], now: &[Sample]| total(now, name, with) > total(&before, name, with);
    let counters: &[(&str, &[(&str, &str)])] = &[
        ("veza_rtp_packets_received_total", &[]),
        ("veza_rtp_packets_forwarded_total", &[]),
        ("veza_rtp_bytes_received_total", &[]),
        ("veza_rtp_bytes_sent_total", &[]),
        ("veza_forward_latency_seconds_count", &[]),
        ("veza_rtt_seconds_count", &[("role", "publisher")]),
        ("veza_rtt_seconds_count", &[("role", "subscriber")]),
        ("veza_jitter_seconds_count", &[("direction", "in")]),
        ("veza_chat_messages_relayed_total", &[]),
    ];
    let mut now = scrape(&base).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !counters.iter().all(|(name, with)| moved(name, with, &now)) || total(&now, "veza_tracks", &[]) < 2.0 {
        let stuck: Vec<_> = counters.iter().filter(|(n, w)| !moved(n, w, &now)).collect();
        assert!(tokio::time::Instant::now() < deadline, "these did not move: {stuck:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        now = scrape(&base).await;
    }

    assert_eq!(total(&now, "veza_sessions", &[]), 1.0);
    assert_eq!(total(&now, "veza_participants", &[]), 2.0);
    assert_eq!(total(&now, "veza_tracks", &[]), 2.0);
    // Every RTP packet carries a 12-byte header and the sims' 160-byte payload; the byte
    // counters are sampled later than the packet counters, so they cover fewer packets.
    let bytes_in = total(&now, "veza_rtp_bytes_received_total", &[]);
    assert!(bytes_in >= 172.0 * 100.0, "{bytes_in} RTP bytes received");
    assert!(bytes_in % 172.0 == 0.0, "{bytes_in} is not a whole number of 172-byte packets");
    assert!(total(&now, "veza_rtp_bytes_sent_total", &[]) >= 172.0 * 100.0);
    // Loopback RTT and jitter: well under 50 ms on average.
    for name in ["veza_rtt_seconds", "veza_jitter_seconds"] {
        let mean = total(&now, &format!("{name}_sum"), &[]) / total(&now, &format!("{name}_count"), &[]);
        assert!(mean < 0.05, "mean {name} {mean}");
    }
    // Present even when nothing was lost (NACKs) or dropped.
    for name in ["veza_rtcp_nacks_received_total", "veza_rtcp_nacks_sent_total", "veza_rtp_packets_dropped_total"] {
        assert!(now.iter().any(|s| s.name == name), "{name} missing");
    }
    // Low cardinality: no participant or session ids in labels.
    for s in &now {
        for (k, v) in &s.labels {
            assert!(!v.contains(ana.id()) && !v.contains(ben.id()) && v != "metered", "{} has {k}={v}", s.name);
        }
    }

    ana.leave().await.unwrap();
    ben.leave().await.unwrap();
    server.shutdown().await.unwrap();
}
