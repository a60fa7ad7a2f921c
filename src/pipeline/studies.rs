/*!
The paper's Ensemble-in-One hyper-parameter studies (Sec. 4.2): Table 2 (augmentation factor n,
derived sub-models), Fig. 5 (paths per iteration p), Fig. 6 (distillation radius eps_d) and the
appendix's EIO(top-k). An [`EioVariant`] is one configuration; presets list the variants they
train ([`super::preset::Preset`]), evaluations carry them into the summary, and the report
draws the studies from there.
*/

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// An Ensemble-in-One configuration of the paper's hyper-parameter studies, beside the default
/// arm: Table 2 (augmentation factor n, derived sub-models), Fig. 5 (paths per iteration p),
/// Fig. 6 (distillation radius eps_d) and the appendix's EIO(top-k) (only the first k of the 21
/// slots gated). Variants with one architecture share an RGN warm-up, and variants that differ
/// only in `sub_models` share their training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EioVariant {
    /// Copies per gated block (n; the paper's choice 2).
    pub copies: usize,
    /// Gated slots: `all` 21 (the paper's choice) or the first k (`topk`).
    pub augment: crate::model::Augment,
    /// Paths per iteration (p; the paper's choice 3).
    pub paths: usize,
    /// Distillation radius eps_d (the paper's choice 0.07).
    pub eps_d: f64,
    /// Paths derived into the deployed model: 1, or an ensemble of several (Table 2's
    /// sub-models, Fig. 5's "/3").
    pub sub_models: usize,
}

impl EioVariant {
    /// The paper's choice: n = 2, all 21 slots gated, p = 3, eps_d = 0.07, one derived model.
    pub fn paper() -> Self {
        EioVariant {
            copies: 2,
            augment: crate::model::Augment::All,
            paths: 3,
            eps_d: 0.07,
            sub_models: 1,
        }
    }

    /// The same with `f` applied, e.g. `EioVariant::paper().with(|v| v.paths = 2)`.
    pub fn with(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }

    /// The architecture suffix of its RGN runs: empty for the paper's, e.g. `-n3`, `-top7`.
    pub(crate) fn arch_suffix(&self) -> String {
        let d = Self::paper();
        let mut s = String::new();
        if self.copies != d.copies {
            s += &format!("-n{}", self.copies);
        }
        if self.augment != d.augment {
            s += &format!("-{}", self.augment);
        }
        s
    }

    /// Its training run: `eio` plus what differs from the paper's choice (`eio-n3`, `eio-p2`,
    /// `eio-epsd0.05`, `eio-top7`, ...).
    pub fn train_key(&self) -> String {
        let d = Self::paper();
        let mut s = format!("eio{}", self.arch_suffix());
        if self.paths != d.paths {
            s += &format!("-p{}", self.paths);
        }
        if self.eps_d != d.eps_d {
            s += &format!("-epsd{}", self.eps_d);
        }
        s
    }

    /// Its derived model: the training key, with `-sub<k>` for an ensemble of k derived paths.
    pub fn key(&self) -> String {
        match self.sub_models {
            1 => self.train_key(),
            k => format!("{}-sub{k}", self.train_key()),
        }
    }

    /// Display name in the paper's notation: what differs from the paper's choice in
    /// parentheses, then the derived models deployed, e.g. `EIO(n=3)/1`, `EIO(p=2)/3`,
    /// `EIO(eps_d=0.05)/1`, `EIO(top7)/1`, `EIO/3`.
    pub fn label(&self) -> String {
        let d = Self::paper();
        let mut parts = Vec::new();
        if self.copies != d.copies {
            parts.push(format!("n={}", self.copies));
        }
        if self.paths != d.paths {
            parts.push(format!("p={}", self.paths));
        }
        if self.eps_d != d.eps_d {
            parts.push(format!("eps_d={}", self.eps_d));
        }
        if self.augment != d.augment {
            parts.push(self.augment.to_string());
        }
        let inner =
            if parts.is_empty() { String::new() } else { format!("({})", parts.join(", ")) };
        format!("EIO{inner}/{}", self.sub_models)
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if self.copies < 2 || self.paths == 0 || self.sub_models == 0 {
            return Err(Error::config(format!(
                "EIO variant {}: needs n >= 2 copies, p >= 1 paths and at least 1 sub-model",
                self.key()
            )));
        }
        let arch = crate::model::ArchConfig {
            copies: self.copies,
            augment: self.augment,
            ..crate::model::ArchConfig::plain()
        };
        let slots = arch.augmented_slots().iter().filter(|&&gated| gated).count();
        let routes = (self.copies as f64).powi(slots as i32);
        if slots == 0 || self.sub_models as f64 > routes {
            return Err(Error::config(format!(
                "EIO variant {}: {} distinct derived paths asked of an RGN with {routes} paths",
                self.key(),
                self.sub_models
            )));
        }
        if !(self.eps_d > 0.0 && self.eps_d <= 1.0) {
            return Err(Error::config(format!(
                "EIO variant {}: eps_d must be in (0, 1]",
                self.key()
            )));
        }
        Ok(())
    }
}

/// The paper's hyper-parameter studies beside its chosen EIO (n = 2, p = 3, eps_d = 0.07, all
/// 21 slots): Table 2's n = 3 and 3 derived sub-models, Fig. 5's p = 2 and 4 (one and three
/// derived models), Fig. 6's eps_d = 0.03, 0.05 and 0.09, and EIO(top7) and EIO(top14) (the
/// chosen EIO is EIO(top21)).
pub fn paper_variants() -> Vec<EioVariant> {
    let v = EioVariant::paper;
    let mut out = vec![
        v().with(|v| v.sub_models = 3),
        v().with(|v| v.copies = 3),
        v().with(|v| {
            v.copies = 3;
            v.sub_models = 3;
        }),
    ];
    for p in [2, 4] {
        out.push(v().with(|v| v.paths = p));
        out.push(v().with(|v| {
            v.paths = p;
            v.sub_models = 3;
        }));
    }
    for e in [0.03, 0.05, 0.09] {
        out.push(v().with(|v| v.eps_d = e));
    }
    for k in [7, 14] {
        out.push(v().with(|v| v.augment = crate::model::Augment::Top(k)));
    }
    out
}
