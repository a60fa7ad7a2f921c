//! The configuration of a training run (`eio train <method>`, `eio finetune`): one
//! [`TrainSpec`] (model, loop, optimiser, method) with per-method defaults, resolved from the
//! defaults, a TOML file and command-line overrides in that order. Adding a method is one file
//! under `train/` and one [`MethodConfig`] variant.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::adp::{Adp, AdpConfig};
use super::adv::{AdvTerm, AdvTrain};
use super::dverge::{Dverge, DvergeConfig};
use super::eio::{Eio, EioConfig};
use super::gal::{Gal, GalConfig};
use super::methods::{Independent, RgnWarmup};
use super::trs::{Trs, TrsConfig};
use super::{Method, TrainConfig};
use crate::error::{Error, Result};
use crate::model::{ArchConfig, ModelSpec};
use crate::optim::OptimConfig;

/// A training method and its settings (TOML: `method = "baseline"` or a `[method.<name>]`
/// table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MethodConfig {
    /// Independent members on clean data (baseline ensembles, fine-tuning).
    Baseline,
    /// RGN warm-up: a fresh random path per batch, clean data.
    RgnWarmup,
    /// Ensemble-in-One vulnerability diversification.
    Eio(EioConfig),
    /// DVERGE.
    Dverge(DvergeConfig),
    /// ADP.
    Adp(AdpConfig),
    /// GAL.
    Gal(GalConfig),
    /// TRS.
    Trs(TrsConfig),
    /// PGD adversarial training.
    Adv(AdvTerm),
}

impl MethodConfig {
    /// The method's command name.
    pub fn name(&self) -> &'static str {
        match self {
            MethodConfig::Baseline => "baseline",
            MethodConfig::RgnWarmup => "rgn-warmup",
            MethodConfig::Eio(_) => "eio",
            MethodConfig::Dverge(_) => "dverge",
            MethodConfig::Adp(_) => "adp",
            MethodConfig::Gal(_) => "gal",
            MethodConfig::Trs(_) => "trs",
            MethodConfig::Adv(_) => "adv",
        }
    }

    /// Every method at its defaults, EIO also with its adversarial term (benchmarks, device
    /// checks, tests).
    pub fn every() -> Vec<MethodConfig> {
        vec![
            MethodConfig::Baseline,
            MethodConfig::RgnWarmup,
            MethodConfig::Eio(EioConfig::default()),
            MethodConfig::Eio(EioConfig { adv: Some(AdvTerm::default()), ..Default::default() }),
            MethodConfig::Dverge(DvergeConfig::default()),
            MethodConfig::Adp(AdpConfig::default()),
            MethodConfig::Gal(GalConfig::default()),
            MethodConfig::Trs(TrsConfig::default()),
            MethodConfig::Adv(AdvTerm::default()),
        ]
    }

    /// The method's adversarial-training term, for the methods that have one.
    pub fn adv_mut(&mut self) -> Option<&mut Option<AdvTerm>> {
        match self {
            MethodConfig::Eio(c) => Some(&mut c.adv),
            MethodConfig::Dverge(c) => Some(&mut c.adv),
            MethodConfig::Adp(c) => Some(&mut c.adv),
            MethodConfig::Gal(c) => Some(&mut c.adv),
            _ => None,
        }
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Everything a training run is configured by (the run's `config.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// Without `--init`: epochs of the method's warm-up run first into `OUT/warmup` (RGN
    /// warm-up before EIO, baseline training before DVERGE), with the same `[train]` (but this
    /// many epochs) and `[optim]`; 0 = none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub warmup_epochs: usize,
    /// Number of member networks (1 = a single network).
    pub members: usize,
    /// Architecture of every member.
    pub arch: ArchConfig,
    /// Loop settings.
    pub train: TrainConfig,
    /// Optimiser.
    pub optim: OptimConfig,
    /// The method.
    #[serde(deserialize_with = "method_config")]
    pub method: MethodConfig,
}

/// Reads a [`MethodConfig`]: a `[method.<name>]` table, or a bare name, which for a method with
/// settings means its defaults (`method = "eio"` is `[method.eio]` left empty; runs write
/// `method = "baseline"`, so the bare form is the one users copy).
fn method_config<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<MethodConfig, D::Error> {
    use serde::de::{self, IntoDeserializer};
    struct Visit;
    impl<'de> de::Visitor<'de> for Visit {
        type Value = MethodConfig;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a method name or a [method.<name>] table")
        }
        fn visit_str<E: de::Error>(self, name: &str) -> std::result::Result<MethodConfig, E> {
            MethodConfig::deserialize(name.into_deserializer()).or_else(|unit: E| {
                // Every method's settings default field by field, so an empty table is valid.
                serde_json::from_value(serde_json::json!({ name: {} })).map_err(|_| unit)
            })
        }
        fn visit_map<A: de::MapAccess<'de>>(
            self,
            map: A,
        ) -> std::result::Result<MethodConfig, A::Error> {
            MethodConfig::deserialize(de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_any(Visit)
}

impl TrainSpec {
    /// The defaults of `method` (the papers' and reference codes' settings): model size,
    /// architecture and optimiser.
    pub fn defaults(method: MethodConfig) -> Self {
        let (members, arch, optim) = match &method {
            MethodConfig::Baseline => (1, ArchConfig::plain(), OptimConfig::default()),
            MethodConfig::RgnWarmup | MethodConfig::Eio(_) => {
                (1, ArchConfig::rgn(2), OptimConfig::default())
            }
            MethodConfig::Dverge(_) => (3, ArchConfig::plain(), OptimConfig::default()),
            MethodConfig::Adp(_) | MethodConfig::Trs(_) => {
                (3, ArchConfig::plain(), OptimConfig::adam())
            }
            MethodConfig::Gal(_) => {
                (3, ArchConfig { relu_slope: 0.1, ..ArchConfig::plain() }, OptimConfig::adam())
            }
            MethodConfig::Adv(_) => (1, ArchConfig::plain(), OptimConfig::default()),
        };
        TrainSpec { warmup_epochs: 0, members, arch, train: TrainConfig::default(), optim, method }
    }

    /// The defaults of `eio finetune`: clean training, SGD lr 1e-3, 40 epochs (paper).
    pub fn finetune() -> Self {
        TrainSpec {
            train: TrainConfig { epochs: 40, ..TrainConfig::default() },
            optim: OptimConfig { lr: 1e-3, ..OptimConfig::default() },
            ..TrainSpec::defaults(MethodConfig::Baseline)
        }
    }

    /// The model this run trains.
    pub fn model_spec(&self) -> ModelSpec {
        ModelSpec { arch: self.arch.clone(), members: self.members }
    }

    /// Checks the values and that the model suits the method.
    pub fn validate(&self) -> Result<()> {
        self.train.validate()?;
        self.optim.validate()?;
        self.arch.validate()?;
        if !(1..=64).contains(&self.members) {
            return Err(Error::config(format!("members must be in 1..=64, got {}", self.members)));
        }
        let name = self.method.name();
        let gated = !self.arch.is_plain();
        match &self.method {
            MethodConfig::RgnWarmup | MethodConfig::Eio(_) => {
                if !gated || self.members != 1 {
                    return Err(Error::config(format!(
                        "{name} trains one Random Gated Network: --copies >= 2, --augment other \
                         than none, one member"
                    )));
                }
            }
            MethodConfig::Baseline | MethodConfig::Adv(_) => {}
            _ => {
                if gated || self.members < 2 {
                    return Err(Error::config(format!(
                        "{name} trains an ensemble of at least 2 plain ResNet-20s (--members N)"
                    )));
                }
            }
        }
        if self.warmup_epochs > 0 && self.warmup().is_none() {
            return Err(Error::config(format!("{name} has no warm-up phase: drop warmup_epochs")));
        }
        match &self.method {
            MethodConfig::Eio(c) => c.validate(),
            MethodConfig::Dverge(c) => c.validate(),
            MethodConfig::Adp(c) => c.validate(),
            MethodConfig::Gal(c) => c.validate(),
            MethodConfig::Trs(c) => c.validate(),
            MethodConfig::Adv(c) => c.validate(),
            MethodConfig::Baseline | MethodConfig::RgnWarmup => Ok(()),
        }
    }

    /// The warm-up run of this one (RGN warm-up before EIO, baseline before DVERGE), when
    /// `warmup_epochs > 0`.
    pub fn warmup(&self) -> Option<TrainSpec> {
        let method = match self.method {
            MethodConfig::Eio(_) => MethodConfig::RgnWarmup,
            MethodConfig::Dverge(_) => MethodConfig::Baseline,
            _ => return None,
        };
        (self.warmup_epochs > 0).then(|| TrainSpec {
            warmup_epochs: 0,
            train: TrainConfig { epochs: self.warmup_epochs, ..self.train.clone() },
            method,
            ..self.clone()
        })
    }

    /// The method, ready to train.
    pub fn build(&self) -> Result<Box<dyn Method>> {
        Ok(match &self.method {
            MethodConfig::Baseline => Box::new(Independent),
            MethodConfig::RgnWarmup => Box::new(RgnWarmup),
            MethodConfig::Eio(c) => Box::new(Eio::new(c.clone())?),
            MethodConfig::Dverge(c) => Box::new(Dverge::new(c.clone())?),
            MethodConfig::Adp(c) => Box::new(Adp::new(c.clone())?),
            MethodConfig::Gal(c) => Box::new(Gal::new(c.clone())?),
            MethodConfig::Trs(c) => Box::new(Trs::new(c.clone(), self.train.epochs)?),
            MethodConfig::Adv(c) => Box::new(AdvTrain::new(c.clone())?),
        })
    }

    /// The configuration as TOML text (what the run saves).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::config(format!("internal: config: {e}")))
    }
}

/// Key of the tag of internally tagged enums (`[attack]` with `kind = "fgsm"`).
const TAG: &str = "kind";

/// Key of the externally tagged [`MethodConfig`] (`[method.<name>]`).
const METHOD: &str = "method";

/// `over` merged into `base`, table by table. A table of another variant of a tagged enum
/// replaces the base's table whole: one whose `kind` differs from the base's, so that the fields
/// of the default variant (PGD's `random_start`) are not carried into another (FGSM); and a
/// `[method.<name>]` of another method than the base's, which then reads as that method (and
/// is refused by name where the command trains another) instead of a map of two methods.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o))
                if o.get(TAG).is_none_or(|kind| b.get(TAG) == Some(kind))
                    && !(k == METHOD && o.keys().any(|name| !b.contains_key(name))) =>
            {
                merge(b, o)
            }
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn to_table(v: &impl Serialize) -> Result<toml::Table> {
    match toml::Value::try_from(v) {
        Ok(toml::Value::Table(t)) => Ok(t),
        _ => Err(Error::config("internal: configuration is not a table")),
    }
}

/// The TOML table of `path` (errors name the file).
fn read_table(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    toml::from_str(&text).map_err(|e| Error::config(format!("{}: {}", path.display(), e.message())))
}

/// The file (if any) with its TOML table.
fn read_file(file: Option<&Path>) -> Result<Option<(&Path, toml::Table)>> {
    file.map(|path| read_table(path).map(|t| (path, t))).transpose()
}

/// `eio finetune`'s configuration ([`TrainSpec::finetune`]), overridden by the TOML `file` (if
/// any), overridden by `overrides`. A fine-tuning file holds only `[train]` and `[optim]`: the
/// model fixes the members and the architecture, and fine-tuning is clean training, so a file
/// with anything else (e.g. a training run's `config.toml`, with its `method`) is an error
/// naming the file rather than a switch to that run's method.
pub fn resolve_finetune(file: Option<&Path>, overrides: &impl Serialize) -> Result<TrainSpec> {
    let file = read_file(file)?;
    if let Some((path, table)) = &file {
        let other: Vec<String> = table
            .iter()
            .filter(|(k, _)| !["train", "optim"].contains(&k.as_str()))
            .map(|(k, v)| match (k.as_str(), v) {
                ("method", toml::Value::String(m)) => format!("method = \"{m}\""),
                ("method", toml::Value::Table(t)) => {
                    let names: Vec<&str> = t.keys().map(String::as_str).collect();
                    format!("[method.{}]", names.join("/"))
                }
                (k, toml::Value::Table(_)) => format!("[{k}]"),
                (k, _) => k.to_string(),
            })
            .collect();
        if !other.is_empty() {
            return Err(Error::config(format!(
                "{}: a fine-tuning configuration holds only [train] and [optim] tables, but this \
                 one also sets {} (a training run's configuration? keep only those two tables)",
                path.display(),
                other.join(", ")
            )));
        }
    }
    resolve_table(&TrainSpec::finetune(), file, overrides)
}

/// `base`, overridden by the TOML `file` (if any), overridden by `overrides` (which serialises
/// only the flags that were given).
pub fn resolve<C>(base: &C, file: Option<&Path>, overrides: &impl Serialize) -> Result<C>
where
    C: Serialize + DeserializeOwned,
{
    resolve_table(base, read_file(file)?, overrides)
}

/// [`resolve`] with the file already read into its table.
fn resolve_table<C>(
    base: &C,
    file: Option<(&Path, toml::Table)>,
    overrides: &impl Serialize,
) -> Result<C>
where
    C: Serialize + DeserializeOwned,
{
    let mut table = to_table(base)?;
    if let Some((path, file_table)) = file {
        merge(&mut table, file_table);
        if let Err(e) = toml::Value::Table(table.clone()).try_into::<C>() {
            return Err(Error::config(format!("{}: {}", path.display(), e.message())));
        }
    }
    merge(&mut table, to_table(overrides)?);
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| Error::config(format!("invalid option: {}", e.message())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_round_trips_and_validates() {
        for m in MethodConfig::every() {
            let spec = TrainSpec::defaults(m);
            spec.validate().unwrap();
            let text = spec.to_toml().unwrap();
            let back: TrainSpec = toml::from_str(&text).unwrap();
            assert_eq!(back, spec, "{text}");
            spec.build().unwrap();
        }
    }

    #[test]
    fn methods_refuse_models_they_cannot_train() {
        let mut s = TrainSpec::defaults(MethodConfig::Adp(AdpConfig::default()));
        s.members = 1;
        assert!(s.validate().unwrap_err().to_string().contains("at least 2"));
        let mut s = TrainSpec::defaults(MethodConfig::Eio(EioConfig::default()));
        s.arch = ArchConfig::plain();
        assert!(s.validate().is_err());
        let mut s = TrainSpec::defaults(MethodConfig::Adv(AdvTerm::default()));
        s.warmup_epochs = 3;
        assert!(s.validate().is_err());
    }
}
