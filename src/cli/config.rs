//! Configuration resolution: built-in defaults, then a TOML file, then command-line flags.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn to_table(v: &impl Serialize) -> Result<toml::Table> {
    match toml::Value::try_from(v).context("internal: config does not serialise")? {
        toml::Value::Table(t) => Ok(t),
        _ => Err(anyhow!("internal: config is not a table")),
    }
}

/// `C::default()`, overridden by the TOML `file` (if any), overridden by the flags that were
/// given (`overrides` serialises only those). Returns the config and its TOML text.
pub fn resolve<C>(file: Option<&Path>, overrides: &impl Serialize) -> Result<(C, String)>
where
    C: Serialize + DeserializeOwned + Default,
{
    let mut table = to_table(&C::default())?;
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let t: toml::Table =
            toml::from_str(&text).map_err(|e| anyhow!("{}: {}", path.display(), e.message()))?;
        merge(&mut table, t);
        let cfg: std::result::Result<C, _> = toml::Value::Table(table.clone()).try_into();
        if let Err(e) = cfg {
            return Err(anyhow!("{}: {}", path.display(), e.message()));
        }
    }
    merge(&mut table, to_table(overrides)?);
    let cfg: C = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| anyhow!("invalid option: {}", e.message()))?;
    let text = toml::to_string(&cfg).context("internal: config does not serialise")?;
    Ok((cfg, text))
}
