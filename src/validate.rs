//! Checks of inputs that would otherwise give wrong numbers silently: model weights (finite,
//! BatchNorm variances not negative) and data against the model (class count).

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Kind, Tensor};

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::NUM_CLASSES;

/// True for the floating-point kinds weights may be stored in.
pub(crate) fn is_float(k: Kind) -> bool {
    matches!(k, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16)
}

/// The first tensor of `tensors` that is not usable as weights, and why: NaN or infinite
/// values, or a negative BatchNorm `running_var`.
pub fn bad_tensor<'a>(
    tensors: impl IntoIterator<Item = (&'a String, &'a Tensor)>,
) -> Option<(String, String)> {
    for (name, t) in tensors {
        if !is_float(t.kind()) || t.numel() == 0 {
            continue;
        }
        let finite = t.isfinite().all().int64_value(&[]) != 0;
        if !finite {
            let nan = t.isnan().sum(Kind::Int64).int64_value(&[]);
            let inf = t.isinf().sum(Kind::Int64).int64_value(&[]);
            let what = match (nan, inf) {
                (0, i) => format!("{i} infinite"),
                (n, 0) => format!("{n} NaN"),
                (n, i) => format!("{n} NaN and {i} infinite"),
            };
            return Some((name.clone(), format!("holds {what} of {} values", t.numel())));
        }
        if name.ends_with("running_var") {
            let min = t.min().double_value(&[]);
            if min < 0.0 {
                return Some((
                    name.clone(),
                    format!("is a BatchNorm variance but holds a negative value ({min})"),
                ));
            }
        }
    }
    None
}

/// Refuses a model file whose tensors hold NaN or infinite values or a negative BatchNorm
/// variance, naming the tensor.
pub fn check_weights(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    match bad_tensor(tensors) {
        Some((name, why)) => Err(Error::checkpoint(
            path,
            format!("tensor '{name}' {why}: refusing to use this model (diverged or corrupt)"),
        )),
        None => Ok(()),
    }
}

/// Refuses data whose class count differs from the models' ([`NUM_CLASSES`] outputs).
pub fn check_classes(data: &Dataset) -> Result<()> {
    let n = data.classes.len();
    if n != NUM_CLASSES {
        let names = if n <= 12 { format!(" ({})", data.classes.join(",")) } else { String::new() };
        return Err(Error::config(format!(
            "the data has {n} classes{names} but eio models classify {NUM_CLASSES} (CIFAR-10): \
             use a {NUM_CLASSES}-class data folder or pick {NUM_CLASSES} classes with --classes"
        )));
    }
    Ok(())
}
