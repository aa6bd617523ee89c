//! ChartQA's relaxed accuracy: numbers within 5% of the target, anything else an exact
//! (case-insensitive) match.

/// `relaxed_correctness` of the ChartQA paper / lmms-eval: numeric answers (a trailing `%`
/// divides by 100) may be off by 5% relative; other answers must match ignoring case and
/// surrounding whitespace.
pub fn relaxed_correct(target: &str, prediction: &str) -> bool {
    fn to_float(text: &str) -> Option<f64> {
        match text.strip_suffix('%') {
            Some(p) => p.trim().parse::<f64>().ok().map(|v| v / 100.0),
            None => text.parse::<f64>().ok(),
        }
    }
    let (t, p) = (target.trim(), prediction.trim());
    match (to_float(p), to_float(t)) {
        (Some(pv), Some(tv)) if tv != 0.0 => ((pv - tv) / tv).abs() <= 0.05,
        _ => p.to_lowercase() == t.to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relaxed_accuracy_rules() {
        assert!(relaxed_correct("100", "104"));
        assert!(!relaxed_correct("100", "106"));
        assert!(relaxed_correct("50%", "0.51"));
        assert!(relaxed_correct("Red", " red "));
        assert!(!relaxed_correct("red", "blue"));
        assert!(relaxed_correct("0", "0"));
        assert!(!relaxed_correct("0", "0.01"));
    }
}
