//! The results of a reproduction (`eio reproduce`) in one file, `summary.json`: every number the
//! report shows comes from here (and from the training runs' `metrics.csv`, copied in as
//! curves), so the report can be regenerated and checked against it.

use serde::{Deserialize, Serialize};

use crate::model::ArchConfig;
use crate::train::EpochRecord;

/// Everything a reproduction measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Preset name (`smoke`, `demo`, `cpu`, `gpu`, `paper`).
    pub preset: String,
    /// Master seed.
    pub seed: u64,
    /// Git revision of the binary.
    pub git: String,
    /// The command that made it.
    pub command: String,
    /// Test images evaluated (the first N per class).
    pub images: usize,
    /// Radii of the white-box rows.
    pub eps_whitebox: Vec<f64>,
    /// Radii of the black-box rows.
    pub eps_blackbox: Vec<f64>,
    /// The white-box attack, in words.
    pub whitebox_attack: String,
    /// The black-box protocol, in words (surrogates, attacks, versions).
    pub blackbox_protocol: String,
    /// Every evaluated model.
    pub models: Vec<ModelResult>,
    /// Transferability matrices (paper Fig. 8).
    pub transferability: Vec<MatrixResult>,
    /// Stability of derived paths (paper Fig. 10), when run.
    pub stability: Option<StabilityResult>,
    /// Training curves of every run.
    pub training: Vec<Curve>,
    /// Jobs whose outputs were loaded (`eio reproduce --from`) rather than computed in this
    /// folder, each with where from, e.g. `train/baseline (zoo/demo)`.
    #[serde(default)]
    pub loaded: Vec<String>,
}

/// One evaluated model (a row of Tables 2-4, a line of Fig. 7, 9, 11).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelResult {
    /// Display name, e.g. `EIO (derived, fine-tuned)` or `DVERGE (1 of 3)`.
    pub name: String,
    /// Training method (`baseline`, `eio`, `dverge`, `adp`, `gal`, `trs`, `adv`).
    pub method: String,
    /// Networks in the trained model (ensemble size; 1 for a single network).
    pub members: usize,
    /// The member evaluated alone (paper: "1 of N"), `None` = the whole model.
    pub selected: Option<usize>,
    /// Whether adversarial training was part of the method ("+AdvT").
    pub adv_training: bool,
    /// The evaluated model file, relative to the output folder.
    pub file: String,
    /// Clean accuracy in [0, 1].
    pub clean: f64,
    /// White-box accuracy per `eps_whitebox` (empty = not run).
    pub whitebox: Vec<f64>,
    /// Black-box accuracy per `eps_blackbox` (empty = not run).
    pub blackbox: Vec<f64>,
    /// Training wall time of everything this model needed, seconds.
    pub train_secs: f64,
    /// Training epochs of everything this model needed.
    pub train_epochs: usize,
    /// Mean wall time per epoch, seconds, of the method's own training run (DVERGE's or EIO's
    /// diversification), not of a warm-up, the baseline DVERGE starts from or a fine-tuning.
    /// Absent in summaries written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch_secs: Option<f64>,
    /// Where the epochs behind `epoch_secs` ran (`cpu, N thread(s)` or `cuda`; see
    /// [`epoch_cost`]). Absent where the run's records do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch_device: Option<String>,
    /// For a model derived from a Random Gated Network: that RGN's architecture (copies n and
    /// gated slots, which the paper's Table 2 and "EIO(topk)" rows are about).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rgn: Option<ArchConfig>,
    /// The EIO configuration of a hyper-parameter study's model (`None`: the paper's choice,
    /// or not an EIO model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<super::studies::EioVariant>,
    /// Peak memory of its training, bytes: the highest epoch peak of the runs it needed
    /// ([`crate::memory`]: allocated device memory on CUDA, the process's resident set on the
    /// CPU), when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
}

/// A transferability matrix: entry (i, j) = success rate on member j of examples made on i.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MatrixResult {
    /// Which model's members.
    pub name: String,
    /// Member labels.
    pub labels: Vec<String>,
    /// Radius of the attack.
    pub eps: f64,
    /// Success rates in [0, 1], row = source, column = target; empty when no evaluation image
    /// was classified correctly by every member (no matrix).
    pub success: Vec<Vec<f64>>,
}

/// Clean and white-box accuracy of several derived paths.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StabilityResult {
    /// Radii of the robust columns.
    pub eps: Vec<f64>,
    /// One entry per path: (clean, robust per eps).
    pub paths: Vec<(f64, Vec<f64>)>,
}

/// The per-epoch records of one training run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    /// Run name.
    pub name: String,
    /// Method.
    pub method: String,
    /// Epoch records (as in the run's `metrics.csv`).
    pub epochs: Vec<EpochRecord>,
}

impl Summary {
    /// The models as a plain-text table: clean, white-box and black-box accuracy (%).
    pub fn table(&self) -> String {
        let pct = |v: f64| if v.is_nan() { "-".to_string() } else { format!("{:.1}", 100.0 * v) };
        let w = self.models.iter().map(|m| m.name.chars().count()).fold(32, usize::max);
        let mut head = format!("{:<w$} {:>6}", "model", "clean");
        for e in &self.eps_whitebox {
            head += &format!(" {:>8}", format!("wb {e}"));
        }
        for e in &self.eps_blackbox {
            head += &format!(" {:>8}", format!("bb {e}"));
        }
        let mut out = head + "\n";
        for m in &self.models {
            let mut line = format!("{:<w$} {:>6}", m.name, pct(m.clean));
            for k in 0..self.eps_whitebox.len() {
                line += &format!(" {:>8}", m.whitebox.get(k).map_or("-".into(), |v| pct(*v)));
            }
            for k in 0..self.eps_blackbox.len() {
                line += &format!(" {:>8}", m.blackbox.get(k).map_or("-".into(), |v| pct(*v)));
            }
            out += &line;
            out.push('\n');
        }
        out
    }
}

/// The mean wall time of one epoch of a run, from its history, and where those epochs ran: a
/// run resumed on another machine (a lent GPU, say) has epochs of very different cost, so the
/// mean is over the epochs that ran wholly on one device, the device most of them ran on (the
/// later on a tie); epochs split across devices are left out. Records from before eio kept
/// devices count all together, with no device. `None` for an empty history.
pub fn epoch_cost(history: &[EpochRecord]) -> Option<(f64, Option<String>)> {
    let mut by: std::collections::BTreeMap<&str, (usize, f64, usize)> = Default::default();
    for (k, e) in history.iter().enumerate() {
        if let [d] = e.devices.as_slice() {
            let entry = by.entry(d.as_str()).or_default();
            *entry = (entry.0 + 1, entry.1 + e.train_secs, k);
        }
    }
    match by.into_iter().max_by_key(|(_, (count, _, last))| (*count, *last)) {
        Some((d, (count, secs, _))) => Some((secs / count as f64, Some(d.to_string()))),
        None if history.iter().all(|e| e.devices.is_empty()) && !history.is_empty() => {
            Some((history.iter().map(|e| e.train_secs).sum::<f64>() / history.len() as f64, None))
        }
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(secs: f64, devices: &[&str]) -> EpochRecord {
        EpochRecord {
            epoch: 1,
            lr: 0.1,
            train_loss: 1.0,
            train_acc: 0.5,
            test_acc: 0.5,
            train_secs: secs,
            images_per_sec: 1.0,
            terms: Default::default(),
            peak_memory_bytes: None,
            devices: devices.iter().map(|d| d.to_string()).collect(),
        }
    }

    /// The cost of an epoch is that of the device most epochs ran on, never a mix.
    #[test]
    fn epoch_cost_keeps_to_one_device() {
        let (cpu, gpu) = ("cpu, 1 thread", "cuda");
        let h = [
            epoch(900.0, &[cpu]),
            epoch(500.0, &[cpu, gpu]),
            epoch(10.0, &[gpu]),
            epoch(1100.0, &[cpu]),
            epoch(12.0, &[gpu]),
            epoch(1000.0, &[cpu]),
        ];
        assert_eq!(epoch_cost(&h), Some((1000.0, Some(cpu.into()))));
        // A tie goes to the device of the later epochs.
        assert_eq!(epoch_cost(&h[..3]), Some((10.0, Some(gpu.into()))));
        // Old records: every epoch, no device; nothing to go on: none.
        assert_eq!(epoch_cost(&[epoch(4.0, &[]), epoch(6.0, &[])]), Some((5.0, None)));
        assert_eq!(epoch_cost(&[]), None);
        assert_eq!(epoch_cost(&[epoch(4.0, &[cpu, gpu])]), None);
    }
}
