//! Summary statistics of benchmark samples. Quantiles interpolate between neighbours, so the
//! median of an even count is the mean of the middle two.

/// `v` sorted.
fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

/// The `q` quantile of sorted, non-empty `s`.
pub fn quantile(s: &[f64], q: f64) -> f64 {
    let pos = (s.len() - 1) as f64 * q;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

/// The `p` quantile of non-empty `v`.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    quantile(&sorted(v), p)
}

/// The median of non-empty `v`.
pub fn median(v: &[f64]) -> f64 {
    percentile(v, 0.5)
}

/// (median, min, max) of non-empty `v`.
pub fn summary(v: &[f64]) -> (f64, f64, f64) {
    let s = sorted(v);
    (quantile(&s, 0.5), s[0], s[s.len() - 1])
}

/// (median, first quartile, third quartile) of non-empty `v`.
pub fn quartiles(v: &[f64]) -> (f64, f64, f64) {
    let s = sorted(v);
    (quantile(&s, 0.5), quantile(&s, 0.25), quantile(&s, 0.75))
}

/// "median [min–max]" with `digits` decimals.
pub fn fmt_range(v: &[f64], digits: usize) -> String {
    let (m, lo, hi) = summary(v);
    format!("{m:.digits$} [{lo:.digits$}–{hi:.digits$}]")
}

/// Milliseconds, as seconds from 1,000 ms on.
pub fn fmt_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1e3)
    } else {
        format!("{ms:.2} ms")
    }
}

/// "median [min–max]" of milliseconds, as seconds from a 1,000 ms median on.
pub fn fmt_ms_range(v: &[f64]) -> String {
    let (m, lo, hi) = summary(v);
    if m >= 1000.0 {
        format!("{:.2} s [{:.2}–{:.2}]", m / 1e3, lo / 1e3, hi / 1e3)
    } else {
        format!("{m:.1} ms [{lo:.1}–{hi:.1}]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(quartiles(&[1.0, 2.0, 3.0, 4.0, 5.0]), (3.0, 2.0, 4.0));
        assert_eq!(summary(&[2.0, 9.0, 1.0]), (2.0, 1.0, 9.0));
        assert_eq!(fmt_range(&[1.0, 2.0, 3.0], 1), "2.0 [1.0–3.0]");
        assert_eq!(fmt_ms(1500.0), "1.50 s");
        assert_eq!(fmt_ms(3.456), "3.46 ms");
        assert_eq!(fmt_ms_range(&[10.0, 20.0, 30.0]), "20.0 ms [10.0–30.0]");
    }
}
