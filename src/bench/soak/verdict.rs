//! Flat or growing: judges one resource's samples over a soak, with the participant count taken out.
//!
//! A soak's load is never level (musicians come and go), so a raw "end minus start" mixes leaks
//! with load. Each resource is fitted by least squares as `value = a + b·t + c·participants`:
//! `c` is what one live participant costs, `b` is the drift at constant load (the leak), and the
//! rise from the first fifth of the measured window to the last is corrected by `c` times the
//! change in participants between them.

use serde::Serialize;

/// One reading: seconds since the start, live participants (the server's gauge), the value.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub t: f64,
    pub participants: f64,
    pub value: f64,
}

/// Fewer measured samples than this and no verdict is given: a fifth would be one or two
/// samples, and one outlier would decide.
pub const MIN_SAMPLES: usize = 10;

/// What counts as growth for one resource.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Threshold {
    /// Growth below this is noise, in the resource's unit.
    pub absolute: f64,
    /// ... or below this fraction of the first fifth's mean, whichever is larger.
    pub relative: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Flat,
    Growing,
    /// Too few samples after warm-up to judge.
    TooShort,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub resource: &'static str,
    pub unit: &'static str,
    pub samples: usize,
    pub first_fifth_mean: f64,
    pub last_fifth_mean: f64,
    pub participants_first_fifth: f64,
    pub participants_last_fifth: f64,
    /// The fitted cost of one live participant (`c`).
    pub per_participant: f64,
    /// Last fifth's mean minus the first's, less what the change in participants explains.
    pub load_adjusted_rise: f64,
    /// The fitted drift at constant load (`b`), per hour.
    pub slope_per_hour: f64,
    /// The rise both measures must exceed to call it growth.
    pub threshold: f64,
    /// The slope that would add `threshold` over the measured window.
    pub slope_threshold_per_hour: f64,
    pub outcome: Outcome,
}

/// Judges `points` (already without the warm-up). Growing means both the fifth-to-fifth rise
/// and the fitted slope over the window exceed the threshold: the means of fifths damp a sample
/// that caught something in flight, the slope uses every sample.
pub fn judge(resource: &'static str, unit: &'static str, points: &[Point], threshold: Threshold) -> Verdict {
    let n = points.len();
    let fifth = (n / 5).max(1);
    let mean = |ps: &[Point], f: fn(&Point) -> f64| {
        if ps.is_empty() { 0.0 } else { ps.iter().map(f).sum::<f64>() / ps.len() as f64 }
    };
    let (first, last) = (&points[..fifth.min(n)], &points[n.saturating_sub(fifth)..]);
    let first_fifth_mean = mean(first, |p| p.value);
    let last_fifth_mean = mean(last, |p| p.value);
    let participants_first_fifth = mean(first, |p| p.participants);
    let participants_last_fifth = mean(last, |p| p.participants);
    let (slope, per_participant) = fit(points);
    let load_adjusted_rise =
        last_fifth_mean - first_fifth_mean - per_participant * (participants_last_fifth - participants_first_fifth);
    let limit = threshold.absolute.max(threshold.relative * first_fifth_mean.abs());
    let span_hours = match (points.first(), points.last()) {
        (Some(a), Some(b)) => (b.t - a.t) / 3600.0,
        _ => 0.0,
    };
    let slope_threshold_per_hour = if span_hours > 0.0 { limit / span_hours } else { 0.0 };
    let slope_per_hour = slope * 3600.0;
    let outcome = if n < MIN_SAMPLES {
        Outcome::TooShort
    } else if load_adjusted_rise > limit && slope_per_hour > slope_threshold_per_hour {
        Outcome::Growing
    } else {
        Outcome::Flat
    };
    Verdict {
        resource,
        unit,
        samples: n,
        first_fifth_mean,
        last_fifth_mean,
        participants_first_fifth,
        participants_last_fifth,
        per_participant,
        load_adjusted_rise,
        slope_per_hour,
        threshold: limit,
        slope_threshold_per_hour,
        outcome,
    }
}

/// Least squares of `value = a + b·t + c·participants`; returns `(b per second, c)`. With a
/// (nearly) constant participant count `c` cannot be told from `a`, so it is left at 0.
fn fit(points: &[Point]) -> (f64, f64) {
    let n = points.len() as f64;
    if points.len() < 2 {
        return (0.0, 0.0);
    }
    let (mt, mp, my) =
        points.iter().fold((0.0, 0.0, 0.0), |(t, p, y), q| (t + q.t / n, p + q.participants / n, y + q.value / n));
    let (mut stt, mut spp, mut stp, mut sty, mut spy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for q in points {
        let (t, p, y) = (q.t - mt, q.participants - mp, q.value - my);
        stt += t * t;
        spp += p * p;
        stp += t * p;
        sty += t * y;
        spy += p * y;
    }
    if stt <= 0.0 {
        return (0.0, 0.0);
    }
    let det = stt * spp - stp * stp;
    // Participants constant, or moving in lockstep with time: no separate load term.
    if spp <= 1e-9 || det <= 1e-9 * stt * spp {
        return (sty / stt, 0.0);
    }
    ((sty * spp - spy * stp) / det, (spy * stt - sty * stp) / det)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Threshold = Threshold { absolute: 4.0, relative: 0.0 };

    /// Participants wandering between 6 and 12 the way churn moves them.
    fn load(i: usize) -> f64 {
        6.0 + ((i * 7919) % 7) as f64
    }

    fn series(per_sample_drift: f64) -> Vec<Point> {
        (0..180)
            .map(|i| Point {
                t: i as f64 * 10.0,
                participants: load(i),
                value: 100.0 + 3.0 * load(i) + per_sample_drift * i as f64,
            })
            .collect()
    }

    #[test]
    fn load_that_comes_and_goes_is_flat() {
        let v = judge("fds", "", &series(0.0), T);
        assert_eq!(v.outcome, Outcome::Flat, "{v:?}");
        assert!((v.per_participant - 3.0).abs() < 1e-6, "{v:?}");
        assert!(v.load_adjusted_rise.abs() < 1e-6, "{v:?}");
    }

    #[test]
    fn a_steady_leak_under_changing_load_is_growing() {
        // One more every 10 samples: 18 over the run, ~11 between the fifths' centres.
        let v = judge("fds", "", &series(0.1), T);
        assert_eq!(v.outcome, Outcome::Growing, "{v:?}");
        assert!((v.slope_per_hour - 36.0).abs() < 1e-6, "{v:?}");
    }

    #[test]
    fn one_sample_caught_mid_spike_does_not_decide() {
        let mut points = series(0.0);
        let last = points.len() - 1;
        points[last].value += 15.0 * T.absolute;
        assert_eq!(judge("fds", "", &points, T).outcome, Outcome::Flat);
    }

    #[test]
    fn a_few_samples_get_no_verdict() {
        assert_eq!(judge("fds", "", &series(1.0)[..MIN_SAMPLES - 1], T).outcome, Outcome::TooShort);
        assert_eq!(judge("fds", "", &[], T).outcome, Outcome::TooShort);
    }
}
