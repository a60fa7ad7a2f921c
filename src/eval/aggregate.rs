/*!
Aggregation of evaluation results. All-or-nothing: an image counts as robust only when it is
classified correctly in every version (restart, attack, surrogate) it was tested with. Spread:
mean, min and max of one accuracy over several models (paths of one RGN).
*/

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Per image, whether every row says correct.
///
/// `table[v][i]` is true when version `v` of image `i` was classified correctly. All rows must
/// have the same length; an empty table is an error (its width is unknown).
pub fn all_or_nothing<R: AsRef<[bool]>>(table: &[R]) -> Result<Vec<bool>> {
    let first = table.first().ok_or_else(|| Error::config("no versions to aggregate"))?;
    let n = first.as_ref().len();
    let mut out = vec![true; n];
    for (v, row) in table.iter().enumerate() {
        let row = row.as_ref();
        if row.len() != n {
            return Err(Error::config(format!(
                "version {v} has {} images, version 0 has {n}",
                row.len()
            )));
        }
        for (o, &c) in out.iter_mut().zip(row) {
            *o &= c;
        }
    }
    Ok(out)
}

/// Fraction of true entries (0 for an empty mask).
pub fn fraction(mask: &[bool]) -> f64 {
    if mask.is_empty() {
        return 0.0;
    }
    mask.iter().filter(|&&b| b).count() as f64 / mask.len() as f64
}

/// Mean, min and max of one accuracy over several models.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// Mean.
    pub mean: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
}

impl Spread {
    /// The spread of `values` (mean 0, min +inf and max -inf when empty).
    pub fn of(values: &[f64]) -> Spread {
        let n = values.len().max(1) as f64;
        Spread {
            mean: values.iter().sum::<f64>() / n,
            min: values.iter().cloned().fold(f64::INFINITY, f64::min),
            max: values.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_made_tables() {
        let t = [
            vec![true, true, false, true],  // clean
            vec![true, false, false, true], // restart 0
            vec![true, true, true, false],  // restart 1
        ];
        assert_eq!(all_or_nothing(&t).unwrap(), vec![true, false, false, false]);
        assert_eq!(fraction(&all_or_nothing(&t).unwrap()), 0.25);
        assert_eq!(all_or_nothing(&t[..1]).unwrap(), t[0]);
        let all = [vec![true; 3], vec![true; 3]];
        assert_eq!(fraction(&all_or_nothing(&all).unwrap()), 1.0);
        let none: [Vec<bool>; 0] = [];
        assert!(all_or_nothing(&none).is_err());
        assert!(all_or_nothing(&[vec![true], vec![true, false]]).is_err());
        assert_eq!(fraction(&[]), 0.0);
    }

    #[test]
    fn spread() {
        let s = Spread::of(&[0.5, 0.7, 0.6]);
        assert!((s.mean - 0.6).abs() < 1e-12 && s.min == 0.5 && s.max == 0.7);
    }
}
