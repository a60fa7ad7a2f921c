//! Experiments that chain training, derivation and evaluation: deriving plain models from an
//! RGN ([`derive`](mod@derive)), the stability of derived paths ([`stability`]) and the whole
//! comparison of the paper from a preset ([`reproduce`]: its sizes in [`preset`], its jobs in
//! [`plan`], results in [`summary`], the EIO hyper-parameter studies in [`studies`], its jobs
//! side by side in [`workers`]). Each returns a
//! serialisable report; the command line only maps flags onto them.

pub mod derive;
pub mod plan;
pub mod preset;
pub mod reproduce;
pub mod stability;
pub mod studies;
pub mod summary;
pub mod workers;
