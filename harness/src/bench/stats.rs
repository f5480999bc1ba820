//! Medians and spreads of samples: a benchmark reports the middle of
//! its runs, with the range beside it, never one timing.

use serde::Serialize;

/// The middle of `n` samples and their range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// The median (mean of the middle two for an even count); `None` when
/// there is nothing to summarise.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

impl Summary {
    pub fn of(values: &[f64]) -> Option<Summary> {
        let finite: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        Some(Summary {
            n: finite.len(),
            median: median(&finite)?,
            min: finite.iter().copied().fold(f64::INFINITY, f64::min),
            max: finite.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

/// `a / b` of two medians, when both exist and `b` is not zero.
pub fn ratio(a: Option<Summary>, b: Option<Summary>) -> Option<f64> {
    let (a, b) = (a?, b?);
    (b.median != 0.0).then(|| a.median / b.median)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts_ignores_order_and_non_finite_values() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
        let s = Summary::of(&[26.0, 24.0, 30.0, 25.0, 27.0]).unwrap();
        assert_eq!((s.n, s.median, s.min, s.max), (5, 26.0, 24.0, 30.0));
        assert_eq!(Summary::of(&[]), None);
        let r = ratio(Summary::of(&[26.0]), Summary::of(&[20.0])).unwrap();
        assert!((r - 1.3).abs() < 1e-12);
        assert_eq!(ratio(Summary::of(&[1.0]), Summary::of(&[0.0])), None);
        assert_eq!(ratio(None, Summary::of(&[1.0])), None);
    }
}
