/*! The paper's published numbers, shown beside ours in the report's tables and figures.

Transcribed from Cai et al., "Ensemble-in-One" (arXiv:2103.14795), Tables 2, 3 and 4
(`shared/docs/ensemble-in-one-paper.txt`; the main rows are repeated in `shared/docs/PROTOCOL.md`,
"Published numbers"). Accuracies are percentages exactly as printed; the paper prints "0%" where
these say 0.0. Nothing here is computed: a number the paper does not give is not in this file.
*/

/// The radii of the columns of Tables 3 and 4: 0.01, 0.02, ..., 0.07 (L-infinity, [0, 1] pixels).
pub const EPS: [f64; 7] = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07];

/// One row of Table 3 or 4: one network selected from (or derived for) deployment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaperRow {
    /// The paper's row label: `method/ensemble size/number selected`, or `EIO(topk)/derived`.
    pub label: &'static str,
    /// Clean accuracy, percent.
    pub clean: f64,
    /// Accuracy at each radius of [`EPS`], percent.
    pub acc: [f64; 7],
}

const fn row(label: &'static str, clean: f64, acc: [f64; 7]) -> PaperRow {
    PaperRow { label, clean, acc }
}

/// Table 3: black-box transfer accuracy (30 adversarial versions per image, all-or-nothing).
pub const TABLE3_BLACKBOX: [PaperRow; 15] = [
    row("baseline/3/1", 91.8, [7.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
    row("baseline/5/1", 92.2, [9.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
    row("baseline/8/1", 92.9, [8.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
    row("ADP/3/1", 88.0, [18.2, 0.7, 0.0, 0.0, 0.0, 0.0, 0.0]),
    row("ADP/5/1", 90.0, [18.5, 0.8, 0.0, 0.0, 0.0, 0.0, 0.0]),
    row("ADP/8/1", 88.7, [14.3, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0]),
    row("GAL/3/1", 85.9, [71.6, 53.8, 34.3, 18.2, 7.7, 2.8, 0.9]),
    row("GAL/5/1", 88.9, [74.5, 52.1, 29.6, 15.7, 6.4, 1.9, 0.5]),
    row("GAL/8/1", 89.1, [71.0, 43.4, 20.6, 8.2, 2.3, 0.8, 0.4]),
    row("DVERGE/3/1", 89.5, [81.6, 67.5, 49.6, 29.7, 15.7, 6.3, 2.8]),
    row("DVERGE/5/1", 88.8, [81.0, 69.2, 53.3, 37.7, 21.9, 11.4, 3.9]),
    row("DVERGE/8/1", 86.5, [79.6, 71.2, 57.4, 42.2, 29.7, 17.7, 8.7]),
    row("EIO(top7)/1", 91.2, [82.1, 71.5, 56.6, 39.2, 25.5, 14.6, 6.8]),
    row("EIO(top14)/1", 88.5, [82.2, 72.5, 58.7, 44.1, 31.7, 19.9, 12.2]),
    row("EIO(top21)/1", 88.5, [84.0, 75.3, 64.1, 52.1, 38.9, 29.2, 19.3]),
];

/// Table 4: white-box accuracy (PGD-50, 5 restarts, all-or-nothing). The paper's caption says
/// "black-box transfer attacks" (copied from Table 3); its text, the protocol (PGD-50 x 5) and
/// Appendix A.3 make it the white-box table. Clean accuracy differs from Table 3 because the
/// paper drew another 1,000 test images for it.
pub const TABLE4_WHITEBOX: [PaperRow; 15] = [
    row("baseline/3/1", 91.2, [0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
    row("baseline/5/1", 91.7, [0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
    row("baseline/8/1", 90.9, [0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
    row("ADP/3/1", 87.9, [3.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
    row("ADP/5/1", 88.9, [2.8, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0]),
    row("ADP/8/1", 88.7, [2.1, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0]),
    row("GAL/3/1", 86.7, [0.3, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0]),
    row("GAL/5/1", 88.2, [8.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0]),
    row("GAL/8/1", 89.0, [9.0, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0]),
    row("DVERGE/3/1", 90.0, [13.8, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0]),
    row("DVERGE/5/1", 89.8, [20.7, 1.3, 0.1, 0.0, 0.0, 0.0, 0.0]),
    row("DVERGE/8/1", 87.7, [27.8, 2.2, 0.1, 0.0, 0.0, 0.0, 0.0]),
    row("EIO(top7)/1", 91.2, [34.1, 4.3, 0.3, 0.0, 0.0, 0.0, 0.0]),
    row("EIO(top14)/1", 88.5, [41.4, 9.5, 0.7, 0.1, 0.0, 0.0, 0.0]),
    row("EIO(top21)/1", 89.0, [52.4, 18.0, 3.4, 0.6, 0.0, 0.0, 0.0]),
];

/// One row of Table 2: EIO with augmentation factor n (all 21 layers gated, p = 3, eps_d = 0.07).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaperTable2Row {
    /// "#Sub-model": paths derived for deployment (1, or an ensemble of 3).
    pub sub_models: usize,
    /// Augmentation factor n: copies per Random Gated Block.
    pub copies: usize,
    /// Clean accuracy, percent.
    pub clean: f64,
    /// Black-box accuracy at eps 0.03, percent.
    pub blackbox: f64,
    /// White-box accuracy at eps 0.01, percent.
    pub whitebox: f64,
}

/// Radius of Table 2's black-box column.
pub const TABLE2_EPS_BLACKBOX: f64 = 0.03;
/// Radius of Table 2's white-box column.
pub const TABLE2_EPS_WHITEBOX: f64 = 0.01;

/// Table 2: the augmentation factor n.
pub const TABLE2: [PaperTable2Row; 4] = [
    PaperTable2Row { sub_models: 1, copies: 2, clean: 88.5, blackbox: 64.1, whitebox: 51.9 },
    PaperTable2Row { sub_models: 1, copies: 3, clean: 88.8, blackbox: 61.6, whitebox: 48.2 },
    PaperTable2Row { sub_models: 3, copies: 2, clean: 90.3, blackbox: 65.9, whitebox: 61.5 },
    PaperTable2Row { sub_models: 3, copies: 3, clean: 89.1, blackbox: 62.9, whitebox: 53.3 },
];
