//! Just enough of the Prometheus text format to read our own counters and histograms.

/// Sum of every sample of `name` (all label sets).
pub fn sum(text: &str, name: &str) -> f64 {
    samples(text).filter(|(n, _, _)| *n == name).map(|(_, _, v)| v).sum()
}

/// Cumulative bucket counts of a histogram, summed over label sets, by upper bound.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    buckets: Vec<(f64, f64)>,
}

pub fn histogram(text: &str, name: &str) -> Histogram {
    let bucket = format!("{name}_bucket");
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for (n, labels, v) in samples(text) {
        if n != bucket {
            continue;
        }
        let Some(le) = label(labels, "le") else { continue };
        let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) };
        match buckets.iter_mut().find(|(b, _)| *b == le) {
            Some((_, count)) => *count += v,
            None => buckets.push((le, v)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Histogram { buckets }
}

impl Histogram {
    /// What was recorded between `earlier` and `self`.
    pub fn minus(&self, earlier: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .map(|(le, c)| {
                let before = earlier.buckets.iter().find(|(b, _)| b == le).map_or(0.0, |(_, c)| *c);
                (*le, c - before)
            })
            .collect();
        Histogram { buckets }
    }

    /// The q-quantile, interpolated linearly inside its bucket (as Prometheus does).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = 0.0;
        let mut below = 0.0;
        for &(le, count) in &self.buckets {
            if count >= rank {
                if le.is_infinite() {
                    return Some(lower);
                }
                let inside = count - below;
                let frac = if inside > 0.0 { (rank - below) / inside } else { 1.0 };
                return Some(lower + (le - lower) * frac);
            }
            lower = le;
            below = count;
        }
        Some(lower)
    }
}

fn samples(text: &str) -> impl Iterator<Item = (&str, &str, f64)> {
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(|line| {
        let (head, value) = line.rsplit_once(' ')?;
        let value = value.parse().ok()?;
        match head.split_once('{') {
            Some((name, labels)) => Some((name, labels.trim_end_matches('}'), value)),
            None => Some((head, "", value)),
        }
    })
}

fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE x histogram\nx_bucket{worker=\"0\",le=\"0.001\"} 50\nx_bucket{worker=\"0\",le=\"0.002\"} 100\nx_bucket{worker=\"0\",le=\"+Inf\"} 100\nc{worker=\"0\"} 3\nc{worker=\"1\"} 4\n";

    #[test]
    fn reads_counters_and_histogram_quantiles() {
        assert_eq!(sum(TEXT, "c"), 7.0);
        let h = histogram(TEXT, "x");
        assert_eq!(h.quantile(0.5), Some(0.001));
        assert!((h.quantile(0.75).unwrap() - 0.0015).abs() < 1e-12);
        assert_eq!(h.minus(&h).quantile(0.5), None);
    }
}
