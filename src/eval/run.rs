//! Shared machinery of the attack protocols: seeding keys and the batched
//! attack-then-judge loop.

use tch::{Device, Tensor};

use crate::attack::{check_output, Attack};
use crate::error::Result;
use crate::model::Classifier;
use crate::seed::{Rng, Seed, Stream};

/// A stable 64-bit key of a textual label (FNV-1a), used as the "epoch" of the evaluation
/// stream, so that e.g. the attack at eps 0.03, restart 2 draws the same numbers whichever eps
/// list it is part of.
pub(crate) fn key(label: &str) -> u64 {
    crate::seed::fnv1a(crate::seed::FNV1A_START, label.as_bytes())
}

/// The attack generator of batch `batch` of the attack run labelled `label`.
pub(crate) fn batch_rng(seed: Seed, label: &str, batch: usize) -> Rng {
    seed.rng(Stream::Eval, key(label), batch as u64)
}

/// What [`attack_and_judge`] returns.
pub(crate) struct Judged {
    /// `correct[j][i]`: judge `j` classifies the adversarial version of image `idx[i]` correctly.
    pub correct: Vec<Vec<bool>>,
    /// The adversarial images `[idx.len(), C, H, W]` on the CPU, when asked for.
    pub adv: Option<Tensor>,
}

/// Attacks images `idx` of `(x, y)` (CPU tensors) on `source` in batches of `batch`, with a
/// generator per batch derived from (`seed`, `label`, batch number), checks every output, and
/// asks each judge whether it still classifies the adversarial images correctly. `done` is
/// called with the number of images finished after each batch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attack_and_judge(
    attack: &dyn Attack,
    source: &dyn Classifier,
    judges: &[&dyn Classifier],
    (x, y): (&Tensor, &Tensor),
    idx: &[i64],
    batch: usize,
    device: Device,
    (seed, label): (Seed, &str),
    keep: bool,
    mut done: impl FnMut(usize),
) -> Result<Judged> {
    let mut correct = vec![Vec::with_capacity(idx.len()); judges.len()];
    let mut kept = Vec::new();
    for (b, chunk) in idx.chunks(batch.max(1)).enumerate() {
        let sel = Tensor::from_slice(chunk);
        let xb = x.index_select(0, &sel).to_device(device);
        let yb = y.index_select(0, &sel).to_device(device);
        let adv = attack.perturb(source, &xb, &yb, &mut batch_rng(seed, label, b));
        check_output(&xb, &adv, attack.eps())?;
        let _guard = tch::no_grad_guard();
        for (j, judge) in judges.iter().enumerate() {
            let ok = judge.logits(&adv, None).argmax(-1, false).eq_tensor(&yb);
            correct[j].extend(Vec::<bool>::try_from(ok.to_device(Device::Cpu))?);
        }
        if keep {
            kept.push(adv.to_device(Device::Cpu));
        }
        done(chunk.len());
    }
    let adv =
        keep.then(
            || {
                if kept.is_empty() {
                    x.narrow(0, 0, 0).copy()
                } else {
                    Tensor::cat(&kept, 0)
                }
            },
        );
    Ok(Judged { correct, adv })
}

/// Whether `target` classifies each image of `(x, y)` correctly (CPU tensors in, one forward).
pub(crate) fn clean_correct(
    target: &dyn Classifier,
    (x, y): (&Tensor, &Tensor),
    batch: usize,
    device: Device,
) -> Result<Vec<bool>> {
    let pred = super::predict(target, x, batch, device);
    Ok(Vec::<bool>::try_from(pred.eq_tensor(y))?)
}

/// Indices where `mask` is true, as i64 (tensor indices).
pub(crate) fn where_true(mask: &[bool]) -> Vec<i64> {
    mask.iter().enumerate().filter(|(_, &m)| m).map(|(i, _)| i as i64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_distinct() {
        assert_eq!(key("whitebox/eps=0.03/restart=0"), key("whitebox/eps=0.03/restart=0"));
        assert_ne!(key("whitebox/eps=0.03/restart=0"), key("whitebox/eps=0.03/restart=1"));
        assert_eq!(where_true(&[false, true, true]), vec![1, 2]);
    }
}
