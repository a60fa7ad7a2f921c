//! # eio: Ensemble-in-One for adversarially robust CIFAR classifiers
//!
//! Trains an ensemble of exponentially many sub-models inside one Random Gated Network (RGN),
//! diversifies their vulnerabilities, derives one plain ResNet-20 for deployment, and evaluates it
//! like the paper (Cai et al., "Ensemble-in-One: Learning Ensemble within Random Gated Networks
//! for Enhanced Adversarial Robustness", arXiv:2103.14795).
//!
//! Modules: [`data`] (CIFAR-10 loading and augmentation), [`model`] (ResNet-20, RGN, routes,
//! ensembles, model files), [`seed`] (one seed, many streams), [`attack`] and [`eval`] (attacks and
//! robustness protocols), [`pipeline`] (experiments that chain training, derivation and
//! evaluation), [`report`] (the HTML report of a reproduction, with its tables and figures).

pub mod attack;
pub mod bench;
pub mod data;
pub mod distill;
pub mod error;
pub mod eval;
pub mod fsx;
pub mod graph;
pub mod memory;
pub mod model;
pub mod optim;
pub mod pipeline;
pub mod progress;
pub mod report;
pub mod seed;
pub mod shim;
pub mod train;
pub mod validate;

pub use error::{Error, Result};
