//! Experiments that chain training, derivation and evaluation: deriving plain models from an
//! RGN ([`derive`]) and the stability of derived paths ([`stability`]). Each returns a
//! serialisable report; the command line only maps flags onto them.

pub mod derive;
pub mod stability;
