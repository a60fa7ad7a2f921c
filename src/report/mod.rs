/*! The reproduction report: `report.html` and a CSV of every table, made from a [`Summary`].

```no_run
# fn main() -> eio::Result<()> {
// A made-up Summary; `eio reproduce` fills a real one.
let summary = eio::report::sample::sample_summary();
let html = eio::report::write(&summary, std::path::Path::new("runs/sample"))?;
println!("{}", html.display());
# Ok(())
# }
```

The page is one self-contained file (inline CSS and SVG, no script, no network): the paper's
Tables 2, 3 and 4 with the published numbers beside ours ([`tables`], [`published`]), accuracy
against eps under black-box and white-box attack (Fig. 7, 9, 11), transferability heatmaps
(Fig. 8), the stability band of derived paths (Fig. 10), training curves and training cost
([`figures`]). Every table and figure names the command, preset, seed and git revision of the
Summary. Every number on the page is formatted from the Summary by [`pct`], [`duration`] or
[`bytes`], so a test can check the page against the data.
*/

pub mod figures;
mod html;
pub mod published;
pub mod sample;
pub mod tables;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::pipeline::studies::EioVariant;
use crate::pipeline::summary::{ModelResult, StabilityResult, Summary};
use figures::{color, Band, BarChart, Heatmap, LineChart, Series};
use tables::{Attack, Table};

pub use html::escape;

/// The report page's file name.
pub const HTML_FILE: &str = "report.html";

/// An accuracy or rate in [0, 1] as the report prints it: `42.4%`. (Tables show a value that was
/// not measured, `None` or NaN, as an empty cell, never through this.)
pub fn pct(frac: f64) -> String {
    format!("{:.1}%", 100.0 * frac)
}

/// A wall time as the report prints it: `42.0 s`, `12.5 min`, `3.25 h`.
pub fn duration(secs: f64) -> String {
    if secs < 120.0 {
        format!("{secs:.1} s")
    } else if secs < 7200.0 {
        format!("{:.1} min", secs / 60.0)
    } else {
        format!("{:.2} h", secs / 3600.0)
    }
}

/// A size as the report (and a training log) prints it: `512.0 MiB`, `1.50 GiB`.
pub use crate::memory::bytes;

/// One figure: an SVG document and what it shows.
#[derive(Debug, Clone)]
pub struct Figure {
    /// HTML anchor, e.g. `fig7-blackbox`.
    pub id: String,
    /// Title.
    pub title: String,
    /// What it shows and how it was measured.
    pub caption: String,
    /// The SVG document.
    pub svg: String,
    /// File stem of the CSV holding its numbers, when they are not in a table of the page.
    pub data: Option<String>,
}

/// A table or a figure.
#[derive(Debug, Clone)]
pub enum Item {
    /// A table, shown and written as CSV.
    Table(Table),
    /// A figure.
    Figure(Figure),
}

/// A titled part of the page.
#[derive(Debug, Clone)]
pub struct Section {
    /// HTML anchor.
    pub id: String,
    /// Heading.
    pub title: String,
    /// Its tables and figures, in order.
    pub items: Vec<Item>,
}

/// The rendered report.
#[derive(Debug, Clone)]
pub struct Report {
    /// The page's sections (what the HTML shows).
    pub sections: Vec<Section>,
    /// Tables behind the figures that the page does not show (written as CSV only).
    pub data: Vec<Table>,
    /// The page.
    pub html: String,
}

impl Report {
    /// Every figure of the page, in order.
    pub fn figures(&self) -> impl Iterator<Item = &Figure> {
        self.sections.iter().flat_map(|s| &s.items).filter_map(|i| match i {
            Item::Figure(f) => Some(f),
            Item::Table(_) => None,
        })
    }

    /// Every table with a CSV file: the page's tables, then the figures' data.
    pub fn tables(&self) -> impl Iterator<Item = &Table> {
        let shown = self.sections.iter().flat_map(|s| &s.items).filter_map(|i| match i {
            Item::Table(t) => Some(t),
            Item::Figure(_) => None,
        });
        shown.chain(&self.data)
    }
}

/// Renders the report of `summary` in memory.
pub fn render(summary: &Summary) -> Result<Report> {
    let s = summary;
    let mut sections = vec![Section {
        id: "sec-tables".into(),
        title: "Tables 2, 3 and 4".into(),
        items: vec![
            Item::Table(tables::table2(s)),
            Item::Table(tables::accuracy_table(s, Attack::BlackBox)),
            Item::Table(tables::accuracy_table(s, Attack::WhiteBox)),
        ],
    }];
    // A section with nothing to show (an arm or study the preset left out) is left out.
    let mut add = |id: &str, title: &str, items: Vec<Item>| {
        if !items.is_empty() {
            sections.push(Section { id: id.into(), title: title.into(), items });
        }
    };
    add("sec-accuracy", "Accuracy against eps (Fig. 7, 9, 11)", accuracy_figures(s)?);
    add(
        "sec-studies",
        "EIO hyper-parameters: paths per iteration and eps_d (Fig. 5, 6)",
        study_figures(s)?,
    );
    add(
        "sec-transferability",
        "Transferability among sub-models (Fig. 8)",
        transferability_figures(s)?,
    );
    if let (Some(table), Some(st)) = (tables::stability(s), &s.stability) {
        let figure = stability_figure(s, st)?;
        add(
            "sec-stability",
            "Stability of derived paths (Fig. 10)",
            vec![Item::Figure(figure), Item::Table(table)],
        );
    }
    add("sec-training", "Training curves", training_figures(s)?);
    if !s.models.is_empty() {
        add(
            "sec-cost",
            "Cost per method",
            vec![Item::Figure(cost_figure(s)?), Item::Table(tables::cost(s))],
        );
    }
    let mut data = Vec::new();
    if !s.transferability.is_empty() {
        data.push(tables::transferability_data(s));
    }
    if !s.training.is_empty() {
        data.push(tables::training_data(s));
    }
    let html = html::page(s, &sections);
    Ok(Report { sections, data, html })
}

/// Writes `report.html`, one CSV per table (`<id>.csv`) and `summary.json` into `dir` (created if
/// missing) and returns the page's path.
pub fn write(summary: &Summary, dir: &Path) -> Result<PathBuf> {
    let report = render(summary)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    // Through the one atomic write path, like every file eio writes.
    let put = |name: &str, text: &str| crate::fsx::write_atomic(&dir.join(name), text.as_bytes());
    for table in report.tables() {
        put(&format!("{}.csv", table.id), &table.csv())?;
    }
    // The page links the Summary itself: every number, unrounded.
    let json = serde_json::to_string_pretty(summary)
        .map_err(|e| Error::Report(format!("summary.json: {e}")))?;
    put("summary.json", &json)?;
    put(HTML_FILE, &report.html)?;
    Ok(dir.join(HTML_FILE))
}

/// The groups of models the paper plots against eps: (id, title, members of the group).
type Group = (&'static str, &'static str, fn(&ModelResult) -> bool);
const GROUPS: [Group; 3] = [
    ("fig7", "whole models (Fig. 7)", |m| !m.adv_training && m.selected.is_none()),
    ("fig9", "single deployed networks (Fig. 9)", |m| {
        !m.adv_training && (m.selected.is_some() || m.members == 1)
    }),
    ("fig11", "with adversarial training (Fig. 11)", |m| m.adv_training),
];

/// Accuracy (percent) against eps, from clean accuracy at eps 0; unmeasured (NaN) points left out.
fn curve(clean: f64, eps: &[f64], acc: &[f64], scale: f64) -> Vec<(f64, f64)> {
    std::iter::once((0.0, clean * scale))
        .chain(eps.iter().zip(acc).map(|(&e, &a)| (e, a * scale)))
        .filter(|p| p.1.is_finite())
        .collect()
}

/// An accuracy-against-eps chart of `series` (eps 0 = clean accuracy), to the largest eps.
fn eps_chart(title: String, series: Vec<Series>) -> Result<String> {
    let x_max = series.iter().flat_map(|s| &s.points).map(|p| p.0).fold(0.01, f64::max);
    LineChart {
        title,
        x_desc: "eps (L-inf)".into(),
        y_desc: "accuracy (%)".into(),
        x: (0.0, x_max * 1.05),
        y: (0.0, 100.0),
        integer_x: false,
        bands: Vec::new(),
        series,
    }
    .svg()
}

fn accuracy_figures(s: &Summary) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for (id, group_title, in_group) in GROUPS {
        for attack in [Attack::BlackBox, Attack::WhiteBox] {
            let models: Vec<_> =
                tables::models_under(s, attack).into_iter().filter(|(_, m)| in_group(m)).collect();
            if models.is_empty() {
                continue;
            }
            let mut series = Vec::new();
            for &(i, m) in &models {
                series.push(Series {
                    label: m.name.clone(),
                    color: color(i),
                    dashed: false,
                    points: curve(m.clean, attack.eps(s), attack.acc(m), 100.0),
                });
            }
            // The published curve of each model the paper has, dashed in the model's colour.
            for &(i, m) in &models {
                if let Some(r) = tables::paper_row(attack, m) {
                    series.push(Series {
                        label: format!("{} (paper)", r.label),
                        color: color(i),
                        dashed: true,
                        points: curve(r.clean, &published::EPS, &r.acc, 1.0),
                    });
                }
            }
            let legend = if series.iter().any(|s| s.dashed) {
                format!("Solid: this run; dashed: the paper's Table {}.", attack.paper().0)
            } else {
                "The paper gives no numbers for these models.".into()
            };
            items.push(Item::Figure(Figure {
                id: format!("{id}-{}", attack.name()),
                title: format!("{} accuracy, {group_title}", capitalise(attack.name())),
                caption: format!(
                    "Accuracy against eps (L-infinity, [0,1] pixels; eps 0 = clean accuracy) on {} \
                     test images. Attack: {}. {legend}",
                    s.images,
                    attack.describe(s)
                ),
                svg: eps_chart(format!("{} attack: {group_title}", attack.name()), series)?,
                data: Some(tables::accuracy_table_id(attack).into()),
            }));
        }
    }
    Ok(items)
}

/// The EIO configuration of a model of the summary: its variant, or the paper's choice for the
/// default EIO arms; `None` for other methods and adversarially trained models.
pub fn eio_setting(m: &ModelResult) -> Option<EioVariant> {
    if m.method != "eio" || m.adv_training {
        return None;
    }
    Some(m.variant.clone().unwrap_or_else(|| {
        let mut v = EioVariant::paper();
        if let Some(arch) = &m.rgn {
            v.copies = arch.copies;
            v.augment = arch.augment;
        }
        v.sub_models = m.members;
        v
    }))
}

/// Fig. 5 (black-box accuracy against eps by paths per iteration p, one or several derived
/// models; n = 2, eps_d = 0.07, all slots gated) and Fig. 6 (by eps_d; n = 2, p = 3, one derived
/// model), each drawn when the run has at least two values of its parameter.
fn study_figures(s: &Summary) -> Result<Vec<Item>> {
    let attack = Attack::BlackBox;
    let paper = EioVariant::paper();
    let models: Vec<(usize, &ModelResult, EioVariant)> = tables::models_under(s, attack)
        .into_iter()
        .filter_map(|(i, m)| eio_setting(m).map(|v| (i, m, v)))
        .filter(|(_, _, v)| v.copies == paper.copies && v.augment == paper.augment)
        .collect();
    /// One study: its figure id and title, which models it draws, their legend labels and the
    /// parameter it varies.
    struct Study {
        id: &'static str,
        title: &'static str,
        pick: fn(&EioVariant) -> bool,
        label: fn(&EioVariant) -> String,
        value: fn(&EioVariant) -> f64,
    }
    let studies = [
        Study {
            id: "fig5-paths",
            title: "paths per iteration p (Fig. 5)",
            pick: |v| v.eps_d == EioVariant::paper().eps_d,
            label: |v| format!("Sample{}/{}", v.paths, v.sub_models),
            value: |v| v.paths as f64,
        },
        Study {
            id: "fig6-eps-d",
            title: "distillation eps_d (Fig. 6)",
            pick: |v| v.paths == EioVariant::paper().paths && v.sub_models == 1,
            label: |v| format!("eps_d={}", v.eps_d),
            value: |v| v.eps_d,
        },
    ];
    let mut items = Vec::new();
    for Study { id, title, pick, label, value } in studies {
        let mut chosen: Vec<&(usize, &ModelResult, EioVariant)> =
            models.iter().filter(|(_, _, v)| pick(v)).collect();
        chosen.sort_by(|a, b| {
            value(&a.2).total_cmp(&value(&b.2)).then(a.2.sub_models.cmp(&b.2.sub_models))
        });
        let mut values: Vec<f64> = chosen.iter().map(|c| value(&c.2)).collect();
        values.dedup();
        if values.len() < 2 {
            continue;
        }
        let series: Vec<Series> = chosen
            .iter()
            .enumerate()
            .map(|(k, (_, m, v))| Series {
                // The study's notation, and whether the derived model was fine-tuned.
                label: format!(
                    "{}, {}",
                    label(v),
                    if m.name.contains("fine-tuned") { "fine-tuned" } else { "derived" }
                ),
                color: color(k),
                dashed: false,
                points: curve(m.clean, attack.eps(s), attack.acc(m), 100.0),
            })
            .collect();
        items.push(Item::Figure(Figure {
            id: id.into(),
            title: format!("Black-box accuracy by {title}"),
            caption: format!(
                "EIO models of this run that differ in one hyper-parameter (the others at the \
                 paper's choice: n = 2, all 21 slots gated, p = 3, eps_d = 0.07, one derived \
                 model; \"SampleP/K\": P paths per iteration, K derived models deployed), \
                 accuracy against eps on {} test images. Attack: {}. The paper plots these \
                 curves without giving their numbers.",
                s.images,
                attack.describe(s)
            ),
            svg: eps_chart(format!("black-box attack: EIO by {title}"), series)?,
            data: Some(tables::accuracy_table_id(attack).into()),
        }));
    }
    Ok(items)
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

fn transferability_figures(s: &Summary) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for (k, m) in s.transferability.iter().enumerate() {
        items.push(Item::Figure(Figure {
            id: format!("fig8-{}", k + 1),
            title: format!("Transferability within {}", m.name),
            caption: if m.success.is_empty() {
                "No evaluation image was classified correctly by every member: no matrix (more \
                 evaluation images or better-trained members give one)."
                    .into()
            } else {
                format!(
                    "Success rate of PGD examples made on the source (row) against the target \
                     (column) at eps {}; the diagonal is the white-box success rate. Lower off \
                     the diagonal = more diverse vulnerabilities.",
                    tables::eps_header(m.eps).trim_start_matches("ε=")
                )
            },
            svg: Heatmap {
                title: format!(
                    "{} (eps {})",
                    m.name,
                    tables::eps_header(m.eps).trim_start_matches("ε=")
                ),
                labels: m.labels.clone(),
                values: m.success.clone(),
                row_desc: "rows: crafted on (source)".into(),
                col_desc: "columns: attacked (target)".into(),
                format: pct,
            }
            .svg()?,
            data: Some("transferability".into()),
        }));
    }
    Ok(items)
}

fn stability_figure(s: &Summary, st: &StabilityResult) -> Result<Figure> {
    // x = 0 is clean accuracy, then each eps: the band spans the paths, the line is their mean.
    let xs: Vec<f64> = std::iter::once(0.0).chain(st.eps.iter().copied()).collect();
    let mut band = Vec::new();
    let mut mean = Vec::new();
    for (k, &x) in xs.iter().enumerate() {
        let values: Vec<f64> = st
            .paths
            .iter()
            .filter_map(
                |(clean, robust)| if k == 0 { Some(*clean) } else { robust.get(k - 1).copied() },
            )
            .filter(|v| v.is_finite())
            .collect();
        if values.is_empty() {
            continue;
        }
        let (m, lo, hi) = tables::mean_min_max(&values);
        band.push((x, lo * 100.0, hi * 100.0));
        mean.push((x, m * 100.0));
    }
    let x_max = xs.iter().copied().fold(0.01, f64::max);
    let n = st.paths.len();
    Ok(Figure {
        id: "fig10-stability".into(),
        title: format!("Accuracy of {n} derived paths"),
        caption: format!(
            "Mean accuracy of {n} paths derived from one RGN (line) and the range from the worst to \
             the best path (band), clean (eps 0) and under white-box attack: {}.",
            s.whitebox_attack
        ),
        svg: LineChart {
            title: format!("{n} derived paths: white-box accuracy"),
            x_desc: "eps (L-inf)".into(),
            y_desc: "accuracy (%)".into(),
            x: (0.0, x_max * 1.05),
            y: (0.0, 100.0),
            integer_x: false,
            bands: vec![Band { label: "min to max over paths".into(), color: color(0), points: band }],
            series: vec![Series { label: "mean".into(), color: color(0), dashed: false, points: mean }],
        }
        .svg()?,
        data: Some("stability".into()),
    })
}

fn training_figures(s: &Summary) -> Result<Vec<Item>> {
    let runs: Vec<_> = s.training.iter().filter(|c| !c.epochs.is_empty()).collect();
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    let epochs = runs.iter().flat_map(|c| &c.epochs).map(|e| e.epoch).max().unwrap_or(1) as f64;
    let lines = |value: fn(&crate::train::EpochRecord) -> f64| -> Vec<Series> {
        runs.iter()
            .enumerate()
            .map(|(i, c)| Series {
                label: c.name.clone(),
                color: color(i),
                dashed: false,
                points: c
                    .epochs
                    .iter()
                    .map(|e| (e.epoch as f64, value(e)))
                    .filter(|p| p.1.is_finite())
                    .collect(),
            })
            .collect()
    };
    let accuracy = lines(|e| e.test_acc * 100.0);
    let loss = lines(|e| e.train_loss);
    let max_loss = loss
        .iter()
        .flat_map(|s| &s.points)
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let caption = |what: &str| {
        format!("{what}, for each of the {} training runs (numbers in training.csv).", runs.len())
    };
    Ok(vec![
        Item::Figure(Figure {
            id: "training-accuracy".into(),
            title: "Test accuracy per epoch".into(),
            caption: caption("Test accuracy after each epoch"),
            svg: LineChart {
                title: "test accuracy".into(),
                x_desc: "epoch".into(),
                y_desc: "accuracy (%)".into(),
                x: (0.0, epochs),
                y: (0.0, 100.0),
                integer_x: true,
                bands: Vec::new(),
                series: accuracy,
            }
            .svg()?,
            data: Some("training".into()),
        }),
        Item::Figure(Figure {
            id: "training-loss".into(),
            title: "Training loss per epoch".into(),
            caption: caption("Mean training loss per epoch (the method's whole objective)"),
            svg: LineChart {
                title: "training loss".into(),
                x_desc: "epoch".into(),
                y_desc: "loss".into(),
                x: (0.0, epochs),
                y: (0.0, if max_loss > 0.0 { max_loss * 1.1 } else { 1.0 }),
                integer_x: true,
                bands: Vec::new(),
                series: loss,
            }
            .svg()?,
            data: Some("training".into()),
        }),
    ])
}

fn cost_figure(s: &Summary) -> Result<Figure> {
    let max = s.models.iter().map(|m| m.train_secs).fold(0.0, f64::max);
    // One unit for the whole axis, the one `duration` would pick for the longest bar.
    let (unit, scale, format): (&str, f64, fn(f64) -> String) = if max < 120.0 {
        ("s", 1.0, |v| format!("{v:.1} s"))
    } else if max < 7200.0 {
        ("min", 60.0, |v| format!("{v:.1} min"))
    } else {
        ("h", 3600.0, |v| format!("{v:.2} h"))
    };
    let bars = s
        .models
        .iter()
        .enumerate()
        .map(|(i, m)| (m.name.clone(), m.train_secs.max(0.0) / scale, color(i)))
        .collect();
    Ok(Figure {
        id: "fig-cost".into(),
        title: "Training wall time per model".into(),
        caption: "Wall time of all the training each model needed (numbers in the table below)."
            .into(),
        svg: BarChart {
            title: "training wall time".into(),
            x_desc: format!("wall time ({unit})"),
            bars,
            format,
        }
        .svg()?,
        data: Some("cost".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formats() {
        assert_eq!(pct(0.4237), "42.4%");
        assert_eq!(pct(0.0), "0.0%");
        assert_eq!(duration(42.0), "42.0 s");
        assert_eq!(duration(750.0), "12.5 min");
        assert_eq!(duration(3.25 * 3600.0), "3.25 h");
        assert_eq!(bytes(512 * 1024 * 1024), "512.0 MiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024 / 2), "1.50 GiB");
    }
}
