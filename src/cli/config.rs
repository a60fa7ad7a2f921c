//! Configuration resolution for the commands whose configuration is one library type with a
//! `Default` (attack protocols, stability): built-in defaults, then a TOML file, then the flags.

use std::path::Path;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// `C::default()`, overridden by the TOML `file` (if any), overridden by the flags that were
/// given (`overrides` serialises only those). Returns the config and its TOML text.
pub fn resolve<C>(file: Option<&Path>, overrides: &impl Serialize) -> Result<(C, String)>
where
    C: Serialize + DeserializeOwned + Default,
{
    let cfg: C = eio::train::config::resolve(&C::default(), file, overrides)?;
    let text = toml::to_string(&cfg).context("internal: config does not serialise")?;
    Ok((cfg, text))
}
