//! Latency percentiles and the median / min–max used by the report.

/// Nearest-rank percentile of an ascending-sorted slice: the smallest value
/// such that at least `p` percent of the samples are <= it.
/// `p` is clamped to 0..=100; p = 0 gives the minimum. None when empty.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() || p.is_nan() {
        return None;
    }
    let n = sorted.len();
    let p = p.clamp(0.0, 100.0);
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    let idx = rank.clamp(1, n) - 1;
    Some(sorted[idx])
}

/// Latency summary in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub count: usize,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

/// Sorts `samples` in place and summarises them; None when there are none.
pub fn summarize(samples: &mut [u64]) -> Option<Summary> {
    samples.sort_unstable();
    Some(Summary {
        count: samples.len(),
        p50: percentile(samples, 50.0)?,
        p90: percentile(samples, 90.0)?,
        p99: percentile(samples, 99.0)?,
        max: *samples.last()?,
    })
}

/// Median, minimum and maximum of a set of per-round figures.
/// The median of an even count is the mean of the two middle values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn spread(values: &[f64]) -> Option<Spread> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_nearest_rank_on_1_to_100() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 90.0), Some(90));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
    }

    #[test]
    fn percentile_rounds_rank_up() {
        // 10 samples: p99 needs 9.9 samples below -> the 10th (the max).
        let v: Vec<u64> = (1..=10).map(|x| x * 10).collect();
        assert_eq!(percentile(&v, 99.0), Some(100));
        assert_eq!(percentile(&v, 90.0), Some(90));
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 51.0), Some(60));
    }

    #[test]
    fn percentile_of_single_and_empty() {
        assert_eq!(percentile(&[7], 50.0), Some(7));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[1, 2], f64::NAN), None);
    }

    #[test]
    fn percentile_clamps_out_of_range_p() {
        let v = [1, 2, 3];
        assert_eq!(percentile(&v, -5.0), Some(1));
        assert_eq!(percentile(&v, 500.0), Some(3));
    }

    #[test]
    fn summarize_sorts_unsorted_samples() {
        let mut v: Vec<u64> = (1..=1000).rev().collect();
        let s = summarize(&mut v).unwrap();
        assert_eq!(
            s,
            Summary {
                count: 1000,
                p50: 500,
                p90: 900,
                p99: 990,
                max: 1000
            }
        );
        assert_eq!(summarize(&mut []), None);
    }

    #[test]
    fn spread_median_odd_even_and_nonfinite() {
        let s = spread(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = spread(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        let s = spread(&[f64::NAN, 5.0, f64::INFINITY]).unwrap();
        assert_eq!((s.median, s.min, s.max), (5.0, 5.0, 5.0));
        assert_eq!(spread(&[]), None);
    }
}
