//! Summaries of repeated measurements: median with min/max, and percentiles.

use serde::{Deserialize, Serialize};

/// A median with the smallest and largest value it summarises.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// The median.
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

impl Spread {
    /// The spread of `values` (all zero when empty).
    pub fn of(values: &[f64]) -> Spread {
        let sorted = sorted(values);
        match (sorted.first(), sorted.last()) {
            (Some(&min), Some(&max)) => Spread { median: percentile(&sorted, 50.0), min, max },
            _ => Spread::default(),
        }
    }
}

/// `values` sorted ascending (NaNs last).
pub fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// The `q`-th percentile (0–100) of ascending `sorted` values, interpolating linearly between
/// the two nearest ranks (numpy's default); 0 for no values.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let rank = (q / 100.0).clamp(0.0, 1.0) * (n - 1) as f64;
            let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentiles_interpolate() {
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), 2.5);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), 2.0);
        let tens: Vec<f64> = (1..=10).map(f64::from).collect();
        assert!((percentile(&tens, 90.0) - 9.1).abs() < 1e-12);
        assert_eq!(percentile(&tens, 0.0), 1.0);
        assert_eq!(percentile(&tens, 100.0), 10.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(Spread::of(&[3.0, 1.0, 2.0]), Spread { median: 2.0, min: 1.0, max: 3.0 });
        assert_eq!(Spread::of(&[]), Spread::default());
    }
}
