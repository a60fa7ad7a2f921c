/*!
Report files: every protocol report is serialisable and written as pretty JSON (everything,
config and seed included) and as CSV (the table), atomically.
*/

use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::model::io::write_atomic;

/// A protocol result that can be written as JSON and CSV.
pub trait Report: Serialize {
    /// The result table as CSV (header line first).
    fn to_csv(&self) -> String;

    /// The whole report as pretty-printed JSON.
    fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("reports serialise");
        s.push('\n');
        s
    }

    /// Writes [`Report::to_json`] to `path` atomically.
    fn write_json(&self, path: &Path) -> Result<()> {
        write_atomic(path, self.to_json().as_bytes())
    }

    /// Writes [`Report::to_csv`] to `path` atomically.
    fn write_csv(&self, path: &Path) -> Result<()> {
        write_atomic(path, self.to_csv().as_bytes())
    }
}

/// A CSV field, quoted when it holds a comma, quote or newline.
pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoting() {
        assert_eq!(csv_field("ce"), "ce");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
