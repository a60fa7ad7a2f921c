/*! The report's tables, built from a [`Summary`]: the paper's Tables 2, 3 and 4 with the
published rows beside ours, the stability of derived paths, and the training cost; plus the
long-format data behind the figures (CSV only).

A [`Table`] keeps numbers as numbers ([`Cell`]): the HTML shows them formatted (percent, minutes),
the CSV keeps the raw value (accuracy as a fraction in [0, 1], time in seconds).
*/

use crate::pipeline::summary::{ModelResult, Summary};

use super::published::{self, PaperRow};
use super::{bytes, duration, pct};

/// One table cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Plain text.
    Text(String),
    /// An accuracy or rate in [0, 1]; `None` or NaN = not measured (an empty cell).
    Acc(Option<f64>),
    /// A count.
    Int(usize),
    /// A duration in seconds; NaN = not measured (an empty cell).
    Secs(f64),
    /// A size in bytes; `None` = not measured.
    Bytes(Option<u64>),
}

impl Cell {
    /// The cell as the HTML page shows it (not yet HTML-escaped).
    pub fn display(&self) -> String {
        match self {
            Cell::Text(s) => s.clone(),
            Cell::Acc(v) => v.filter(|v| v.is_finite()).map(pct).unwrap_or_default(),
            Cell::Int(n) => n.to_string(),
            Cell::Secs(s) if s.is_finite() => duration(*s),
            Cell::Secs(_) => String::new(),
            Cell::Bytes(b) => b.map(bytes).unwrap_or_default(),
        }
    }

    /// The cell as the CSV file holds it: raw values, so nothing is lost to rounding.
    pub fn raw(&self) -> String {
        match self {
            Cell::Text(s) => s.clone(),
            Cell::Acc(v) => v.filter(|v| v.is_finite()).map(number).unwrap_or_default(),
            Cell::Int(n) => n.to_string(),
            Cell::Secs(s) if s.is_finite() => number(*s),
            Cell::Secs(_) => String::new(),
            Cell::Bytes(b) => b.map(|b| b.to_string()).unwrap_or_default(),
        }
    }

    fn paper(percent: f64) -> Cell {
        Cell::Acc(Some(percent / 100.0))
    }
}

/// Up to 6 decimals without trailing zeros (0.816, not 0.8160000000000001).
fn number(x: f64) -> String {
    let s = format!("{x:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.into()
    }
}

/// Where a row's numbers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKind {
    /// Measured by this reproduction.
    Ours,
    /// Published in the paper.
    Paper,
    /// A heading across the table (HTML only, not in the CSV).
    Heading,
}

/// One table row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Where its numbers come from.
    pub kind: RowKind,
    /// Its cells, one per header column (a heading has one text cell).
    pub cells: Vec<Cell>,
}

/// A titled table.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// File stem of its CSV and HTML anchor, e.g. `table3-blackbox`.
    pub id: String,
    /// Title.
    pub title: String,
    /// What it shows and how it was measured.
    pub caption: String,
    /// Column names.
    pub header: Vec<String>,
    /// Rows.
    pub rows: Vec<Row>,
}

impl Table {
    /// The table as CSV (RFC 4180 quoting), headings left out.
    pub fn csv(&self) -> String {
        let line =
            |cells: Vec<String>| cells.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(",");
        let mut out = line(self.header.clone());
        out.push('\n');
        for row in self.rows.iter().filter(|r| r.kind != RowKind::Heading) {
            out.push_str(&line(row.cells.iter().map(Cell::raw).collect()));
            out.push('\n');
        }
        out
    }

    /// Whether the table has rows of this reproduction (not only published ones).
    pub fn has_ours(&self) -> bool {
        self.rows.iter().any(|r| r.kind == RowKind::Ours)
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Column name of a radius: `ε=0.03`.
pub fn eps_header(eps: f64) -> String {
    format!("ε={}", number(eps))
}

/// Equal radii: the Summary's eps come from arithmetic (k/255, 0.01 steps), so compare loosely.
pub fn same_eps(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// Accuracy of `acc` (measured at radii `eps`) at radius `at`; `None` if not measured there
/// (no such radius, or NaN, which the pipeline writes for a radius it could not evaluate).
pub fn at_eps(eps: &[f64], acc: &[f64], at: f64) -> Option<f64> {
    let i = eps.iter().position(|&e| same_eps(e, at))?;
    acc.get(i).copied().filter(|v| v.is_finite())
}

/// The paper's display name of a method.
fn method_name(method: &str) -> &str {
    match method {
        "baseline" => "baseline",
        "adp" => "ADP",
        "gal" => "GAL",
        "dverge" => "DVERGE",
        "trs" => "TRS",
        "adv" => "AdvT",
        "eio" => "EIO",
        other => other,
    }
}

/// Paper order of the methods (Tables 3-4 rows), for sorting ours the same way.
fn method_rank(method: &str) -> usize {
    ["baseline", "adp", "gal", "dverge", "trs", "adv", "eio"]
        .iter()
        .position(|m| *m == method)
        .unwrap_or(usize::MAX)
}

/// Networks deployed: 1 for a member selected alone, else the whole model.
fn deployed(m: &ModelResult) -> usize {
    if m.selected.is_some() {
        1
    } else {
        m.members
    }
}

/// The paper's row notation of a model: `DVERGE/3/1` (method / ensemble size / networks
/// selected), `DVERGE/3` for a whole ensemble, `EIO(top21)/1` (gated slots / derived networks).
/// Ours and published rows with the same notation are shown side by side.
pub fn notation(m: &ModelResult) -> String {
    let adv = if m.adv_training && m.method != "adv" { "+AdvT" } else { "" };
    let method = method_name(&m.method);
    if m.method == "eio" {
        let slots = match m.rgn.as_ref().map(|a| a.augment) {
            Some(crate::model::Augment::All) => "(top21)".to_string(),
            Some(crate::model::Augment::None) | None => String::new(),
            Some(a) => format!("({a})"),
        };
        format!("EIO{slots}{adv}/{}", deployed(m))
    } else if m.selected.is_some() {
        format!("{method}{adv}/{}/1", m.members)
    } else {
        format!("{method}{adv}/{}", m.members)
    }
}

/// Which attack a table or figure is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// Black-box transfer from surrogate ensembles (Table 3, left panels of Fig. 7, 9, 11).
    BlackBox,
    /// White-box PGD (Table 4, right panels).
    WhiteBox,
}

impl Attack {
    /// "black-box" or "white-box".
    pub fn name(self) -> &'static str {
        match self {
            Attack::BlackBox => "black-box",
            Attack::WhiteBox => "white-box",
        }
    }
    /// The radii this attack was run at.
    pub fn eps(self, s: &Summary) -> &[f64] {
        match self {
            Attack::BlackBox => &s.eps_blackbox,
            Attack::WhiteBox => &s.eps_whitebox,
        }
    }
    /// A model's accuracies under this attack, per [`Attack::eps`] (empty = not run).
    pub fn acc(self, m: &ModelResult) -> &[f64] {
        match self {
            Attack::BlackBox => &m.blackbox,
            Attack::WhiteBox => &m.whitebox,
        }
    }
    /// The paper's table of this attack: (table number, rows).
    pub fn paper(self) -> (u32, &'static [PaperRow]) {
        match self {
            Attack::BlackBox => (3, &published::TABLE3_BLACKBOX),
            Attack::WhiteBox => (4, &published::TABLE4_WHITEBOX),
        }
    }
    /// The attack in words, from the Summary.
    pub fn describe(self, s: &Summary) -> &str {
        match self {
            Attack::BlackBox => &s.blackbox_protocol,
            Attack::WhiteBox => &s.whitebox_attack,
        }
    }
}

/// The published row with the same notation as `m`, if the paper has one.
pub fn paper_row(attack: Attack, m: &ModelResult) -> Option<&'static PaperRow> {
    let label = notation(m);
    attack.paper().1.iter().find(|r| r.label == label)
}

/// Our models that were run under `attack`, in the paper's method order (stable within a method).
pub fn models_under(s: &Summary, attack: Attack) -> Vec<(usize, &ModelResult)> {
    let mut models: Vec<(usize, &ModelResult)> =
        s.models.iter().enumerate().filter(|(_, m)| !attack.acc(m).is_empty()).collect();
    models.sort_by_key(|(_, m)| method_rank(&m.method));
    models
}

/// Sorted union of two radius lists.
fn union_eps(a: &[f64], b: &[f64]) -> Vec<f64> {
    let mut all: Vec<f64> = a.iter().chain(b).copied().collect();
    all.sort_by(f64::total_cmp);
    all.dedup_by(|x, y| same_eps(*x, *y));
    all
}

/// Table 3 (black-box) or Table 4 (white-box) in the paper's layout: clean accuracy, then
/// accuracy per eps; each of our rows is followed by the published row of the same notation,
/// and published rows without a counterpart come last. Columns: the paper's eps and ours.
pub fn accuracy_table(s: &Summary, attack: Attack) -> Table {
    let (number, paper) = attack.paper();
    let ours_eps = attack.eps(s);
    let eps = union_eps(ours_eps, &published::EPS);
    let mut header: Vec<String> = ["row", "source", "model", "clean"].map(String::from).to_vec();
    header.extend(eps.iter().map(|&e| eps_header(e)));
    let source = format!("paper, Table {number}");
    let paper_cells = |r: &PaperRow| {
        let mut cells =
            vec![Cell::Text(r.label.into()), Cell::Text(source.clone()), Cell::Text(String::new())];
        cells.push(Cell::paper(r.clean));
        for &e in &eps {
            let v = published::EPS.iter().position(|&p| same_eps(p, e)).map(|i| r.acc[i] / 100.0);
            cells.push(Cell::Acc(v));
        }
        Row { kind: RowKind::Paper, cells }
    };
    let mut rows = Vec::new();
    let mut shown = vec![false; paper.len()];
    for (_, m) in models_under(s, attack) {
        let mut cells = vec![
            Cell::Text(notation(m)),
            Cell::Text("this run".into()),
            Cell::Text(m.name.clone()),
            Cell::Acc(Some(m.clean)),
        ];
        cells.extend(eps.iter().map(|&e| Cell::Acc(at_eps(ours_eps, attack.acc(m), e))));
        rows.push(Row { kind: RowKind::Ours, cells });
        let label = notation(m);
        if let Some(i) = paper.iter().position(|r| r.label == label) {
            if !shown[i] {
                shown[i] = true;
                rows.push(paper_cells(&paper[i]));
            }
        }
    }
    if shown.iter().any(|s| !s) {
        rows.push(heading("Published rows without a counterpart in this run"));
        rows.extend(paper.iter().zip(&shown).filter(|(_, s)| !**s).map(|(r, _)| paper_cells(r)));
    }
    let what = match attack {
        Attack::BlackBox => "Black-box transfer accuracy",
        Attack::WhiteBox => "White-box accuracy",
    };
    Table {
        id: accuracy_table_id(attack).into(),
        title: format!("Table {number}: {what} against eps"),
        caption: format!(
            "Accuracy of each model (clean, then under attack at each eps) on {} test images. \
             Attack: {}. Row notation as in the paper: method/ensemble size/networks selected; \
             EIO(topk)/m = RGN with the first k of 21 layers gated, m derived networks. \
             Paper rows (grey) are copied from the paper's Table {number}; empty = not measured.",
            s.images,
            attack.describe(s)
        ),
        header,
        rows,
    }
}

/// File stem (and anchor) of [`accuracy_table`].
pub fn accuracy_table_id(attack: Attack) -> &'static str {
    match attack {
        Attack::BlackBox => "table3-blackbox",
        Attack::WhiteBox => "table4-whitebox",
    }
}

fn heading(text: &str) -> Row {
    Row { kind: RowKind::Heading, cells: vec![Cell::Text(text.into())] }
}

/// Table 2: EIO with different augmentation factors n, clean accuracy, black-box accuracy at
/// eps 0.03 and white-box accuracy at eps 0.01, ours beside the paper's.
pub fn table2(s: &Summary) -> Table {
    use published::{TABLE2, TABLE2_EPS_BLACKBOX as BB, TABLE2_EPS_WHITEBOX as WB};
    let mut header: Vec<String> =
        ["sub-models", "n", "gated slots", "source", "model", "clean"].map(String::from).to_vec();
    header.push(format!("black-box {}", eps_header(BB)));
    header.push(format!("white-box {}", eps_header(WB)));
    let paper_cells = |r: &published::PaperTable2Row| Row {
        kind: RowKind::Paper,
        cells: vec![
            Cell::Int(r.sub_models),
            Cell::Int(r.copies),
            Cell::Text("all".into()),
            Cell::Text("paper, Table 2".into()),
            Cell::Text(String::new()),
            Cell::paper(r.clean),
            Cell::paper(r.blackbox),
            Cell::paper(r.whitebox),
        ],
    };
    let mut rows = Vec::new();
    let mut shown = [false; TABLE2.len()];
    // Table 2 varies n and the derived sub-models (and shows the gated slots); models of the
    // other studies (p, eps_d) are Fig. 5's and 6's.
    let paper = crate::pipeline::studies::EioVariant::paper();
    let in_table = |m: &&ModelResult| {
        super::eio_setting(m).is_some_and(|v| v.paths == paper.paths && v.eps_d == paper.eps_d)
    };
    for m in s.models.iter().filter(in_table) {
        let Some(arch) = &m.rgn else { continue };
        rows.push(Row {
            kind: RowKind::Ours,
            cells: vec![
                Cell::Int(deployed(m)),
                Cell::Int(arch.copies),
                Cell::Text(arch.augment.to_string()),
                Cell::Text("this run".into()),
                Cell::Text(m.name.clone()),
                Cell::Acc(Some(m.clean)),
                Cell::Acc(at_eps(&s.eps_blackbox, &m.blackbox, BB)),
                Cell::Acc(at_eps(&s.eps_whitebox, &m.whitebox, WB)),
            ],
        });
        let matches = |r: &published::PaperTable2Row| {
            r.sub_models == deployed(m)
                && r.copies == arch.copies
                && arch.augment == crate::model::Augment::All
        };
        if let Some(i) = TABLE2.iter().position(matches) {
            if !shown[i] {
                shown[i] = true;
                rows.push(paper_cells(&TABLE2[i]));
            }
        }
    }
    if shown.iter().any(|s| !s) {
        rows.push(heading("Published rows without a counterpart in this run"));
        rows.extend(TABLE2.iter().zip(shown).filter(|(_, s)| !s).map(|(r, _)| paper_cells(r)));
    }
    Table {
        id: "table2-copies".into(),
        title: "Table 2: augmentation factor n".into(),
        caption: format!(
            "EIO models by the number of derived networks deployed (sub-models) and the copies per \
             gated block (n). Black-box: {}. White-box: {}. The paper's rows gate all 21 layers \
             (p = 3, eps_d = 0.07). Empty = not measured at that eps.",
            s.blackbox_protocol, s.whitebox_attack
        ),
        header,
        rows,
    }
}

/// Mean, minimum and maximum of a non-empty list.
pub fn mean_min_max(xs: &[f64]) -> (f64, f64, f64) {
    let mean = xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (mean, min, max)
}

/// The stability of derived paths (paper Appendix A.1): one row per path, then mean, min, max.
pub fn stability(s: &Summary) -> Option<Table> {
    let st = s.stability.as_ref().filter(|st| !st.paths.is_empty())?;
    let mut header = vec!["path".to_string(), "clean".to_string()];
    header.extend(st.eps.iter().map(|&e| eps_header(e)));
    let mut rows: Vec<Row> = st
        .paths
        .iter()
        .enumerate()
        .map(|(i, (clean, robust))| {
            let mut cells = vec![Cell::Text(format!("path {}", i + 1)), Cell::Acc(Some(*clean))];
            cells.extend((0..st.eps.len()).map(|k| Cell::Acc(robust.get(k).copied())));
            Row { kind: RowKind::Ours, cells }
        })
        .collect();
    let column = |k: Option<usize>| -> Vec<f64> {
        let value = |(c, r): &(f64, Vec<f64>)| k.map_or(Some(*c), |k| r.get(k).copied());
        st.paths.iter().filter_map(value).filter(|v| v.is_finite()).collect()
    };
    for (name, pick) in [("mean", 0), ("min", 1), ("max", 2)] {
        let stat = |xs: Vec<f64>| {
            let (mean, min, max) = mean_min_max(&xs);
            Cell::Acc((!xs.is_empty()).then_some([mean, min, max][pick]))
        };
        let mut cells = vec![Cell::Text(name.into()), stat(column(None))];
        cells.extend((0..st.eps.len()).map(|k| stat(column(Some(k)))));
        rows.push(Row { kind: RowKind::Ours, cells });
    }
    Some(Table {
        id: "stability".into(),
        title: "Stability of derived paths".into(),
        caption: format!(
            "Clean and white-box accuracy ({}) of {} paths derived from one RGN, with their mean, \
             minimum and maximum (paper Appendix A.1 and Fig. 10).",
            s.whitebox_attack,
            st.paths.len()
        ),
        header,
        rows,
    })
}

/// Training cost per model: epochs, wall time, wall time per epoch of the method's own
/// training, peak memory where measured.
pub fn cost(s: &Summary) -> Table {
    let memory = s.models.iter().any(|m| m.peak_memory_bytes.is_some());
    let devices = s.models.iter().any(|m| m.epoch_device.is_some());
    let mut header: Vec<String> =
        ["model", "method", "epochs", "training wall time", "per epoch of its method"]
            .map(String::from)
            .to_vec();
    if devices {
        header.push("epoch ran on".into());
    }
    if memory {
        header.push("peak memory".into());
    }
    let rows = s
        .models
        .iter()
        .map(|m| {
            let mut cells = vec![
                Cell::Text(m.name.clone()),
                Cell::Text(m.method.clone()),
                Cell::Int(m.train_epochs),
                Cell::Secs(m.train_secs),
                Cell::Secs(m.epoch_secs.unwrap_or(f64::NAN)),
            ];
            if devices {
                cells.push(Cell::Text(m.epoch_device.clone().unwrap_or_else(|| "-".into())));
            }
            if memory {
                cells.push(Cell::Bytes(m.peak_memory_bytes));
            }
            Row { kind: RowKind::Ours, cells }
        })
        .collect();
    Table {
        id: "cost".into(),
        title: "Training cost".into(),
        caption: "Wall time and epochs of all the training each model needed (an ensemble's \
                  members, an RGN's warm-up, diversification and fine-tuning), and the mean wall \
                  time of one epoch of the model's own method (DVERGE's or EIO's \
                  diversification, not the warm-up, baseline or fine-tuning around it), over the \
                  epochs that ran wholly on the device most of them ran on (a run resumed on \
                  another machine mixes costs; its wall time counts every device)."
            .into(),
        header,
        rows,
    }
}

/// Long-format data of the transferability figures: one row per (matrix, source, target).
pub fn transferability_data(s: &Summary) -> Table {
    let header = ["matrix", "eps", "source", "target", "success"].map(String::from).to_vec();
    let mut rows = Vec::new();
    for m in &s.transferability {
        for (i, row) in m.success.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                let label = |k: usize| m.labels.get(k).cloned().unwrap_or_else(|| k.to_string());
                rows.push(Row {
                    kind: RowKind::Ours,
                    cells: vec![
                        Cell::Text(m.name.clone()),
                        Cell::Text(number(m.eps)),
                        Cell::Text(label(i)),
                        Cell::Text(label(j)),
                        Cell::Acc(Some(v)),
                    ],
                });
            }
        }
    }
    Table {
        id: "transferability".into(),
        title: "Transferability".into(),
        caption: String::new(),
        header,
        rows,
    }
}

/// Long-format data of the training-curve figures: one row per (run, epoch), with where the
/// epoch ran (a run resumed on a lent GPU has epochs of very different `train_secs`; several
/// devices joined by " + " when the epoch itself was split, empty in old records).
pub fn training_data(s: &Summary) -> Table {
    let header = [
        "run",
        "method",
        "epoch",
        "lr",
        "train_loss",
        "train_acc",
        "test_acc",
        "train_secs",
        "ran_on",
    ]
    .map(String::from)
    .to_vec();
    let rows = s
        .training
        .iter()
        .flat_map(|c| {
            c.epochs.iter().map(move |e| Row {
                kind: RowKind::Ours,
                cells: vec![
                    Cell::Text(c.name.clone()),
                    Cell::Text(c.method.clone()),
                    Cell::Int(e.epoch),
                    Cell::Text(number(e.lr)),
                    Cell::Text(number(e.train_loss)),
                    Cell::Acc(Some(e.train_acc)),
                    Cell::Acc(Some(e.test_acc)),
                    Cell::Secs(e.train_secs),
                    Cell::Text(e.devices.join(" + ")),
                ],
            })
        })
        .collect();
    Table {
        id: "training".into(),
        title: "Training curves".into(),
        caption: String::new(),
        header,
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notation_follows_the_paper() {
        let m = |method: &str, members, selected| ModelResult {
            method: method.into(),
            members,
            selected,
            ..Default::default()
        };
        assert_eq!(notation(&m("dverge", 3, Some(0))), "DVERGE/3/1");
        assert_eq!(notation(&m("baseline", 8, None)), "baseline/8");
        let mut eio = m("eio", 1, None);
        eio.rgn = Some(crate::model::ArchConfig::rgn(2));
        assert_eq!(notation(&eio), "EIO(top21)/1");
        eio.adv_training = true;
        assert_eq!(notation(&eio), "EIO(top21)+AdvT/1");
    }

    #[test]
    fn csv_quotes_and_keeps_raw_values() {
        let t = Table {
            id: "t".into(),
            title: String::new(),
            caption: String::new(),
            header: vec!["a,b".into(), "c".into()],
            rows: vec![
                Row {
                    kind: RowKind::Ours,
                    cells: vec![Cell::Text("x \"y\"".into()), Cell::Acc(Some(0.8160000000000001))],
                },
                Row { kind: RowKind::Heading, cells: vec![Cell::Text("skip".into())] },
            ],
        };
        assert_eq!(t.csv(), "\"a,b\",c\n\"x \"\"y\"\"\",0.816\n");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(12.5), "12.5");
    }
}
