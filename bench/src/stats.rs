//! The values of one figure across rounds: median and spread.

use serde_json::{Value, json};

/// One figure measured once per round.
#[derive(Clone, Debug, Default)]
pub struct Series(pub Vec<f64>);

impl Series {
    pub fn push(&mut self, value: f64) {
        self.0.push(value);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut values: Vec<f64> = self.0.iter().copied().filter(|v| v.is_finite()).collect();
        values.sort_by(f64::total_cmp);
        values
    }

    /// The median (mean of the two middle values for an even count); NaN
    /// when there is no value.
    pub fn median(&self) -> f64 {
        let values = self.sorted();
        match values.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => values[n / 2],
            n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        }
    }

    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    /// `{"rounds": [...], "median", "min", "max"}`.
    pub fn json(&self) -> Value {
        json!({
            "rounds": self.0.iter().map(|v| number(*v)).collect::<Vec<_>>(),
            "median": number(self.median()),
            "min": number(self.min()),
            "max": number(self.max()),
        })
    }
}

/// Round-by-round quotient `a[i] / b[i]` (the rounds are paired: the same
/// round of two modes ran back to back).
pub fn paired_ratio(a: &Series, b: &Series) -> Series {
    Series(a.0.iter().zip(&b.0).map(|(a, b)| a / b).collect())
}

/// A JSON number, rounded to 6 significant digits; `null` for NaN.
pub fn number(value: f64) -> Value {
    if !value.is_finite() {
        return Value::Null;
    }
    if value == 0.0 {
        return json!(0.0);
    }
    let digits = 6 - (value.abs().log10().floor() as i32 + 1);
    let scale = 10f64.powi(digits.clamp(0, 12));
    json!((value * scale).round() / scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let odd = Series(vec![3.0, 1.0, 2.0]);
        assert_eq!((odd.median(), odd.min(), odd.max()), (2.0, 1.0, 3.0));
        assert_eq!(Series(vec![4.0, 1.0, 2.0, 3.0]).median(), 2.5);
        assert!(Series::default().median().is_nan());
        assert_eq!(
            paired_ratio(&Series(vec![2.0, 3.0]), &Series(vec![4.0, 3.0])).0,
            vec![0.5, 1.0]
        );
    }

    #[test]
    fn numbers_are_rounded() {
        assert_eq!(number(1234.56789), json!(1234.57));
        assert_eq!(number(0.000123456789), json!(0.000123457));
        assert_eq!(number(f64::NAN), Value::Null);
    }
}
