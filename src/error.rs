//! The library's error type: every variant names the file, flag or key at fault.

use std::path::PathBuf;

/// Errors returned by the eio library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written. The OS error is part of the message, not a
    /// `source`, so that error chains (`{:#}`) print it once.
    #[error("{}: {}", path.display(), err)]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        err: std::io::Error,
    },
    /// A data set file or folder is missing, empty or malformed.
    #[error("{}: {msg}", path.display())]
    Data {
        /// The offending file or folder.
        path: PathBuf,
        /// What was expected.
        msg: String,
    },
    /// A checkpoint is missing keys, has wrong shapes, or is not an eio/PyTorch model.
    #[error("{}: {msg}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// An invalid option value.
    #[error("{0}")]
    Config(String),
    /// Training diverged (NaN or infinite loss).
    #[error("{0}")]
    Diverged(String),
    /// A report figure could not be drawn.
    #[error("report: {0}")]
    Report(String),
    /// An error reported by libtorch.
    #[error("libtorch: {0}")]
    Tch(tch::TchError),
}

impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        Error::Tch(e)
    }
}

/// Result with the library's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), err: source }
    }
    /// A data error on `path`.
    pub fn data(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Data { path: path.into(), msg: msg.into() }
    }
    /// A checkpoint error on `path`.
    pub fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.into(), msg: msg.into() }
    }
    /// The message without the file it names, for a message of its own about that file.
    pub fn detail(&self) -> String {
        match self {
            Error::Io { err, .. } => err.to_string(),
            Error::Data { msg, .. } | Error::Checkpoint { msg, .. } => msg.clone(),
            e => e.to_string(),
        }
    }
    /// A configuration error.
    pub fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }
}
