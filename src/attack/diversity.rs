/*!
Input diversity (Xie et al., "Improving Transferability of Adversarial Examples with Input
Diversity", arXiv:1803.06978): before each gradient computation the input is, with probability
`prob`, shrunk to a random size and zero-padded at a random position back to its original size.

For CIFAR (32x32) with the default `resize_rate` 0.9 the random side is uniform in 28..=31 (as
in the `DIFGSM` of Harry24k/adversarial-attacks-pytorch); resizing is bilinear. The coin is
flipped once per gradient computation for the whole batch (as in the reference
implementations). Every op is a differentiable tch op, so the gradient flows back to the
untransformed input. Random numbers come from the attack's generator (see [`crate::attack`]).
*/

use rand::Rng as _;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Error, Result};
use crate::seed::Rng;

/// Random resize-and-pad input transformation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiversityConfig {
    /// Probability of transforming the input at a gradient computation (default 0.5).
    pub prob: f64,
    /// Smallest side after resizing, as a fraction of the input side (default 0.9, i.e. 28 of
    /// 32 pixels); the side is drawn uniformly from `floor(side * resize_rate) ..= side - 1`.
    pub resize_rate: f64,
}

impl Default for DiversityConfig {
    fn default() -> Self {
        DiversityConfig { prob: 0.5, resize_rate: 0.9 }
    }
}

impl DiversityConfig {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.prob) {
            return Err(Error::config(format!(
                "input diversity probability must be in [0, 1], got {}",
                self.prob
            )));
        }
        if !(self.resize_rate > 0.0 && self.resize_rate <= 1.0) {
            return Err(Error::config(format!(
                "input diversity resize_rate must be in (0, 1], got {}",
                self.resize_rate
            )));
        }
        Ok(())
    }

    /// The transformed input (or `x` itself when the coin says no).
    ///
    /// # Shapes
    /// `[B, C, H, W]` -> `[B, C, H, W]`.
    pub fn apply(&self, x: &Tensor, rng: &mut Rng) -> Tensor {
        let coin: f64 = rng.gen();
        if coin >= self.prob {
            return x.shallow_clone();
        }
        let size = x.size();
        let (h, w) = (size[2], size[3]);
        let min_h = ((h as f64 * self.resize_rate).floor() as i64).clamp(1, h);
        let rh = rng.gen_range(min_h..=(h - 1).max(min_h));
        let rw = if h == w { rh } else { ((rh * w) as f64 / h as f64).round() as i64 }.clamp(1, w);
        let top = rng.gen_range(0..=h - rh);
        let left = rng.gen_range(0..=w - rw);
        let resized = if (rh, rw) == (h, w) {
            x.shallow_clone()
        } else {
            x.upsample_bilinear2d([rh, rw], false, None, None)
        };
        resized.constant_pad_nd([left, w - rw - left, top, h - rh - top])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::{Seed, Stream};
    use tch::{Device, Kind};

    #[test]
    fn shape_kept_padding_zero_and_differentiable() {
        let rng = &mut Seed(0).rng(Stream::Eval, 0, 0);
        let d = DiversityConfig { prob: 1.0, resize_rate: 0.5 };
        let x = Tensor::linspace(1.0, 2.0, 384, (Kind::Float, Device::Cpu))
            .view([2, 3, 8, 8])
            .set_requires_grad(true);
        let mut saw_border = false;
        for _ in 0..10 {
            let out = d.apply(&x, rng);
            assert_eq!(out.size(), vec![2, 3, 8, 8]);
            // Inputs are >= 1, so zeros can only come from the padding.
            let zeros = out.eq(0.0).sum(Kind::Int64).int64_value(&[]);
            saw_border |= zeros > 0;
            let g = Tensor::run_backward(&[out.sum(Kind::Float)], &[&x], false, false);
            assert!(g[0].abs().sum(Kind::Float).double_value(&[]) > 0.0);
        }
        assert!(saw_border, "a side in 4..=7 always leaves padding");
        let never = DiversityConfig { prob: 0.0, ..Default::default() };
        assert!(never.apply(&x, rng).equal(&x));
        assert!(DiversityConfig { prob: 1.5, ..Default::default() }.validate().is_err());
        assert!(DiversityConfig { resize_rate: 0.0, ..Default::default() }.validate().is_err());
    }
}
