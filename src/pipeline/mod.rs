//! Experiments that chain training, derivation and evaluation: deriving plain models from an
//! RGN ([`derive`]). Each returns a serialisable report; the command line only maps flags onto
//! them.

pub mod derive;
