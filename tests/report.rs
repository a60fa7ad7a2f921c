//! The report is generated from the Summary: every number of the sample Summary appears in its
//! table row as the report's formatters print it, changing a number changes the page, every
//! figure is an inline SVG, and the page references nothing outside itself.
//!
//! Set `EIO_REPORT_SAMPLE_DIR=DIR` to keep the sample report in DIR (for `scripts/check-report`).

use eio::pipeline::summary::{ModelResult, Summary};
use eio::report::published::{TABLE3_BLACKBOX, TABLE4_WHITEBOX};
use eio::report::sample::sample_summary;
use eio::report::tables::{at_eps, eps_header, mean_min_max, notation, Attack};
use eio::report::{bytes, duration, escape, pct, render, write};

use crate::util::tempdir;

/// The HTML between the element with `id` and the next `<h3` (a table or figure and its captions).
fn block<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no element id={id}"));
    let rest = &html[start..];
    let end = rest[1..].find("<h3").map_or(rest.len(), |e| e + 1);
    &rest[..end]
}

/// The text of each `<td>` of every `<tr>` in `html`.
fn rows(html: &str) -> Vec<Vec<String>> {
    html.split("<tr")
        .skip(1)
        .map(|tr| {
            let tr = &tr[..tr.find("</tr>").unwrap_or(tr.len())];
            tr.split("<td")
                .skip(1)
                .map(|td| {
                    let inner = &td[td.find('>').unwrap() + 1..];
                    inner[..inner.find("</td>").unwrap()].to_string()
                })
                .collect()
        })
        .collect()
}

/// The row of table `id` whose cells include `name` (as the page escapes it), in `kind` rows.
fn row_of(html: &str, id: &str, kind: &str, name: &str) -> Vec<String> {
    let table = block(html, id);
    let found: Vec<Vec<String>> = table
        .split("<tr class=\"")
        .skip(1)
        .filter(|tr| tr.starts_with(kind))
        .flat_map(|tr| rows(&format!("<tr{tr}")))
        .filter(|cells| cells.iter().any(|c| *c == escape(name)))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "table {id}: expected one {kind} row with '{name}', found {found:?}"
    );
    found.into_iter().next().unwrap()
}

/// `want` appear in `cells` in this order (other cells, empty ones included, may sit between).
fn assert_in_order(cells: &[String], want: &[String], what: &str) {
    let mut it = cells.iter();
    for w in want {
        assert!(it.any(|c| c == w), "{what}: '{w}' missing or out of order in {cells:?}");
    }
}

/// Accuracies of `m` under `attack` in the order of the table's columns (radii sorted).
fn expected_row(s: &Summary, m: &ModelResult, attack: Attack) -> Vec<String> {
    let mut eps = attack.eps(s).to_vec();
    eps.sort_by(f64::total_cmp);
    let mut want = vec![pct(m.clean)];
    want.extend(eps.iter().map(|&e| pct(at_eps(attack.eps(s), attack.acc(m), e).unwrap())));
    want
}

/// Every `src=`, `href=`, `url(` and `@import` target that leaves the page.
fn external_refs(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for key in ["src=", "href=", "url(", "@import", "srcset="] {
        for (at, _) in html.match_indices(key) {
            let target: String = html[at + key.len()..]
                .trim_start_matches(['"', '\'', ' '])
                .chars()
                .take_while(|c| !matches!(c, '"' | '\'' | ')' | ' ' | '>'))
                .collect();
            if target.contains("://") || target.starts_with("//") {
                found.push(format!("{key}{target}"));
            }
        }
    }
    found
}

#[test]
fn report_numbers_come_from_the_summary() {
    let s = sample_summary();
    let html = render(&s).unwrap().html;

    // Tables 3 and 4: each of our models' row holds its clean accuracy and its accuracy at
    // every radius, in column order; the published row of the same notation follows it.
    for attack in [Attack::BlackBox, Attack::WhiteBox] {
        let (id, paper, number) = match attack {
            Attack::BlackBox => ("table3-blackbox", &TABLE3_BLACKBOX, 3),
            Attack::WhiteBox => ("table4-whitebox", &TABLE4_WHITEBOX, 4),
        };
        for &e in attack.eps(&s) {
            assert!(
                block(&html, id).contains(&format!("<th>{}</th>", eps_header(e))),
                "{id}: no column {e}"
            );
        }
        for m in s.models.iter().filter(|m| !attack.acc(m).is_empty()) {
            let cells = row_of(&html, id, "ours", &m.name);
            assert_eq!(cells[0], escape(&notation(m)));
            assert_in_order(&cells, &expected_row(&s, m, attack), &format!("{id} / {}", m.name));
        }
        // Published rows: labelled, and their numbers as printed in the paper.
        let dverge = paper.iter().find(|r| r.label == "DVERGE/3/1").unwrap();
        let cells = row_of(&html, id, "paper", "DVERGE/3/1");
        assert_eq!(cells[1], format!("paper, Table {number}"));
        let mut want = vec![pct(dverge.clean / 100.0)];
        want.extend(dverge.acc.iter().map(|a| pct(a / 100.0)));
        assert_in_order(&cells, &want, &format!("{id} / paper DVERGE/3/1"));
    }
    // The GAL model has no black-box numbers: it is in Table 4 only.
    assert!(!block(&html, "table3-blackbox").contains("GAL (1 of 3)"));

    // Table 2: the EIO models' clean, black-box at 0.03 and white-box at 0.01 (those at the
    // paper's p = 3 and eps_d = 0.07: the other studies are Fig. 5's and 6's).
    let in_table2 = |m: &&ModelResult| {
        eio::report::eio_setting(m).is_some_and(|v| v.paths == 3 && v.eps_d == 0.07)
    };
    assert_eq!(s.models.iter().filter(in_table2).count(), 3, "the sample's Table 2 models");
    for m in s.models.iter().filter(in_table2) {
        let cells = row_of(&html, "table2-copies", "ours", &m.name);
        let want = [
            pct(m.clean),
            pct(at_eps(&s.eps_blackbox, &m.blackbox, 0.03).unwrap()),
            pct(at_eps(&s.eps_whitebox, &m.whitebox, 0.01).unwrap()),
        ];
        assert_in_order(&cells, &want, &format!("table 2 / {}", m.name));
    }

    // Stability: every path's numbers, and the mean/min/max rows computed from them.
    let st = s.stability.as_ref().unwrap();
    for (k, (clean, robust)) in st.paths.iter().enumerate() {
        let cells = row_of(&html, "stability", "ours", &format!("path {}", k + 1));
        let want: Vec<String> = std::iter::once(clean).chain(robust).map(|&v| pct(v)).collect();
        assert_in_order(&cells, &want, "stability");
    }
    let cleans: Vec<f64> = st.paths.iter().map(|p| p.0).collect();
    let (mean, min, max) = mean_min_max(&cleans);
    for (name, v) in [("mean", mean), ("min", min), ("max", max)] {
        assert_eq!(row_of(&html, "stability", "ours", name)[1], pct(v), "stability {name}");
    }

    // Cost: wall time (and peak memory where measured) of every model.
    for m in &s.models {
        let cells = row_of(&html, "cost", "ours", &m.name);
        assert!(cells.contains(&duration(m.train_secs)), "cost / {}: {cells:?}", m.name);
        let per_epoch = duration(m.epoch_secs.expect("the sample records it"));
        assert!(cells.contains(&per_epoch), "cost / {}: {cells:?}", m.name);
        let device = m.epoch_device.clone().expect("the sample records it");
        assert!(cells.contains(&device), "cost / {}: {cells:?}", m.name);
        if let Some(b) = m.peak_memory_bytes {
            assert!(cells.contains(&bytes(b)), "cost / {}: {cells:?}", m.name);
        }
    }

    // Transferability: every entry is printed in its heatmap.
    for (k, matrix) in s.transferability.iter().enumerate() {
        let figure = block(&html, &format!("fig8-{}", k + 1));
        for v in matrix.success.iter().flatten() {
            // plotters writes each label on its own line inside <text>.
            let text = format!("\n{}\n</text>", pct(*v));
            assert!(figure.contains(&text), "fig8-{}: no {}", k + 1, pct(*v));
        }
    }

    // Every table and figure names the command, preset, seed and git revision.
    let items = html.matches("<table>").count() + html.matches("<figure ").count();
    let prov: Vec<&str> = html.split("<p class=\"prov\">").skip(1).collect();
    assert_eq!(prov.len(), items, "one provenance line per table and figure");
    for p in prov {
        let p = &p[..p.find("</p>").unwrap()];
        for want in
            [escape(&s.command), escape(&s.preset), format!("seed {}", s.seed), escape(&s.git)]
        {
            assert!(p.contains(&want), "provenance '{p}' lacks '{want}'");
        }
    }
}

#[test]
fn changing_a_number_changes_the_page() {
    let mut s = sample_summary();
    let before = render(&s).unwrap().html;
    let name = s.models[0].name.clone();
    let old = pct(s.models[0].whitebox[1]);
    s.models[0].whitebox[1] = 0.1234;
    let after = render(&s).unwrap().html;
    let cells = row_of(&after, "table4-whitebox", "ours", &name);
    assert!(cells.contains(&"12.3%".to_string()) && !cells.contains(&old), "{cells:?}");
    assert!(row_of(&before, "table4-whitebox", "ours", &name).contains(&old));
}

#[test]
fn every_figure_is_inline_svg_and_nothing_is_external() {
    let s = sample_summary();
    let report = render(&s).unwrap();
    let html = &report.html;
    // The sample fills every figure: Fig. 7, 9 and 11 under both attacks, Fig. 5 and 6 (the
    // EIO studies), two transferability heatmaps, the stability band, two training curves, the
    // cost bars.
    let mut ids: Vec<String> = ["fig7", "fig9", "fig11"]
        .iter()
        .flat_map(|g| ["black-box", "white-box"].map(|a| format!("{g}-{a}")))
        .collect();
    ids.extend(
        [
            "fig5-paths",
            "fig6-eps-d",
            "fig8-1",
            "fig8-2",
            "fig10-stability",
            "training-accuracy",
            "training-loss",
            "fig-cost",
        ]
        .map(String::from),
    );
    let figures: Vec<&str> = report.figures().map(|f| f.id.as_str()).collect();
    assert_eq!(figures, ids.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(html.matches("<svg ").count(), ids.len());
    for id in &ids {
        let figure = block(html, id);
        assert!(
            figure.starts_with(&format!("id=\"{id}\">\n<svg ")) && figure.contains("</svg>"),
            "{id}"
        );
    }
    assert_eq!(external_refs(html), Vec::<String>::new());
    assert!(!html.contains("<script"), "the page needs no script");
    // The checker itself finds external references.
    assert_eq!(
        external_refs("<img src=\"https://x/y.png\"><a href='//cdn/z'>"),
        ["src=https://x/y.png", "href=//cdn/z"]
    );
}

#[test]
fn write_puts_the_page_csvs_and_summary_in_a_folder() {
    let s = sample_summary();
    let keep = std::env::var_os("EIO_REPORT_SAMPLE_DIR");
    let tmp = tempdir();
    let dir = keep.as_ref().map_or(tmp.path().to_path_buf(), std::path::PathBuf::from);
    let page = write(&s, &dir).unwrap();
    assert_eq!(page, dir.join("report.html"));
    let html = std::fs::read_to_string(&page).unwrap();
    for name in [
        "table2-copies",
        "table3-blackbox",
        "table4-whitebox",
        "stability",
        "cost",
        "transferability",
        "training",
    ] {
        let csv = std::fs::read_to_string(dir.join(format!("{name}.csv"))).unwrap();
        assert!(csv.lines().count() > 1, "{name}.csv is empty");
        assert!(
            html.contains(&format!("href=\"{name}.csv\"")),
            "the page does not link {name}.csv"
        );
    }
    // CSVs keep raw values: accuracies as fractions, exactly as in the Summary.
    let csv = std::fs::read_to_string(dir.join("table3-blackbox.csv")).unwrap();
    let m = &s.models[0];
    let line = csv.lines().find(|l| l.contains(&m.name)).unwrap();
    assert!(
        line.contains(&format!(",{},", m.clean)) && line.contains(&format!(",{},", m.blackbox[0])),
        "{line}"
    );
    let training = std::fs::read_to_string(dir.join("training.csv")).unwrap();
    for e in &s.training[2].epochs {
        assert!(
            training.contains(&format!(",{},", e.test_acc)),
            "training.csv lacks {}",
            e.test_acc
        );
    }
    // Where each epoch ran, the last column: epochs of one run may differ in cost by 50x.
    assert!(training.lines().next().unwrap().ends_with(",train_secs,ran_on"), "{training}");
    let ran_on: Vec<&str> =
        training.lines().skip(1).map(|l| l.rsplit(',').next().unwrap()).collect();
    let want: Vec<String> =
        s.training.iter().flat_map(|c| &c.epochs).map(|e| e.devices.join(" + ")).collect();
    assert_eq!(ran_on, want);
    let json: Summary =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(json, s);
}

#[test]
fn an_empty_summary_renders_the_published_tables_only() {
    let report = render(&Summary::default()).unwrap();
    assert_eq!(report.figures().count(), 0);
    assert_eq!(report.html.matches("<svg").count(), 0);
    assert_eq!(report.html.matches("Not measured in this run").count(), 3, "tables 2, 3, 4");
    let dverge = row_of(&report.html, "table3-blackbox", "paper", "DVERGE/8/1");
    assert!(dverge.contains(&pct(0.574)), "{dverge:?}");
}

#[test]
fn unmeasured_numbers_are_empty_cells_not_nan() {
    // The pipeline writes NaN for a radius it could not evaluate.
    let mut s = sample_summary();
    s.models[0].blackbox[2] = f64::NAN;
    s.transferability[0].success[0][1] = f64::NAN;
    s.stability.as_mut().unwrap().paths[0].1[0] = f64::NAN;
    let html = render(&s).unwrap().html;
    assert!(!html.contains("NaN"), "NaN printed");
    let cells = row_of(&html, "table3-blackbox", "ours", &s.models[0].name);
    let eps_col = 4 + 2; // row, source, model, clean, then eps 0.01, 0.02, 0.03
    assert_eq!(cells[eps_col], "", "{cells:?}");
    assert_eq!(cells[eps_col - 1], pct(s.models[0].blackbox[1]));
}

/// Fig. 5 draws the EIO models that differ in paths per iteration (and derived models), Fig. 6
/// those that differ in eps_d, each with the paper's choice as the reference curve; Table 2
/// shows n and sub-models only.
#[test]
fn the_eio_studies_pick_their_models() {
    let s = sample_summary();
    let report = render(&s).unwrap();
    let svg = |id: &str| report.figures().find(|f| f.id == id).unwrap().svg.clone();
    let fig5 = svg("fig5-paths");
    for label in ["Sample2/1", "Sample2/3", "Sample3/1"] {
        assert!(fig5.contains(label), "{label}");
    }
    assert!(!fig5.contains("eps_d=0.03"));
    let fig6 = svg("fig6-eps-d");
    assert!(fig6.contains("eps_d=0.03") && fig6.contains("eps_d=0.07"));
    assert!(!fig6.contains("p=2"));
    let table2 = report.tables().find(|t| t.id == "table2-copies").unwrap();
    let text = format!("{:?}", table2.rows);
    assert!(text.contains("EIO(n=3)/1"), "{text}");
    assert!(!text.contains("p=2") && !text.contains("eps_d=0.03"), "{text}");
}
