/*! The report page: one HTML file with its CSS inline and the figures as inline SVG, so it can
be mailed, archived or opened offline as it is; no script is needed to read it.
*/

use std::fmt::Write;

use crate::pipeline::summary::Summary;

use super::tables::{Cell, RowKind, Table};
use super::{Figure, Item, Section};

/// Escapes text for HTML element content and double-quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "
body { font: 15px/1.45 system-ui, sans-serif; color: #222; max-width: 1240px; margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ccc; padding-bottom: .2em; }
h3 { margin: 1.4em 0 .3em; font-size: 1.05em; }
code { background: #f3f3f3; padding: 0 .25em; border-radius: 3px; word-break: break-all; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .2em 1em; }
dl.meta dt { font-weight: 600; }
dl.meta dd { margin: 0; }
table { border-collapse: collapse; margin: .4em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: .15em .45em; text-align: right; white-space: nowrap; }
th { background: #f6f6f6; }
td.text, th.text { text-align: left; }
tr.paper td { color: #777; font-style: italic; background: #fafafa; }
tr.heading td { text-align: left; font-weight: 600; background: #eef; }
.caption { color: #444; margin: .2em 0; max-width: 60em; }
.prov { color: #666; font-size: .85em; margin: .2em 0 1em; }
figure { margin: 1em 0; }
figure svg { max-width: 100%; height: auto; border: 1px solid #eee; }
.scroll { overflow-x: auto; }
";

/// The whole page.
pub fn page(s: &Summary, sections: &[Section]) -> String {
    let mut out = String::new();
    let title = format!("eio reproduction report: preset {}", s.preset);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    out.push_str(
        "<p class=\"caption\">Ensemble-in-One (Cai et al., arXiv:2103.14795) reproduced with eio: \
         the paper's tables with its published numbers beside ours (grey rows), and its figures \
         drawn from this run's numbers.</p>\n<dl class=\"meta\">\n",
    );
    let meta = [
        ("command", format!("<code>{}</code>", escape(&s.command))),
        ("preset", escape(&s.preset)),
        ("seed", s.seed.to_string()),
        ("git revision", format!("<code>{}</code>", escape(&s.git))),
        ("test images", s.images.to_string()),
        ("white-box attack", escape(&s.whitebox_attack)),
        ("black-box protocol", escape(&s.blackbox_protocol)),
    ];
    for (k, v) in meta {
        let _ = writeln!(out, "<dt>{k}</dt><dd>{v}</dd>");
    }
    if !s.loaded.is_empty() {
        let _ = writeln!(
            out,
            "<dt>loaded, not computed here</dt><dd>{}</dd>",
            escape(&s.loaded.join(", "))
        );
    }
    out.push_str("</dl>\n");
    out.push_str(
        "<p class=\"caption\">Data: <a href=\"summary.json\">summary.json</a> (every number, \
         unrounded) and one CSV per table (accuracies as fractions in [0,1], times in seconds, \
         memory in bytes).</p>\n<nav><b>Contents:</b> ",
    );
    let links: Vec<String> = sections
        .iter()
        .map(|sec| format!("<a href=\"#{}\">{}</a>", sec.id, escape(&sec.title)))
        .collect();
    out.push_str(&links.join(" · "));
    out.push_str("</nav>\n");
    for sec in sections {
        let _ = writeln!(out, "<h2 id=\"{}\">{}</h2>", sec.id, escape(&sec.title));
        for item in &sec.items {
            match item {
                Item::Table(t) => table(&mut out, s, t),
                Item::Figure(f) => figure(&mut out, s, f),
            }
        }
    }
    out.push_str("</body>\n</html>\n");
    out
}

/// The line naming what made a table or figure.
fn provenance(s: &Summary, data: &str) -> String {
    format!(
        "<p class=\"prov\">Made by <code>{}</code> · preset {} · seed {} · git <code>{}</code> · \
         data <a href=\"{data}\">{data}</a></p>\n",
        escape(&s.command),
        escape(&s.preset),
        s.seed,
        escape(&s.git)
    )
}

fn table(out: &mut String, s: &Summary, t: &Table) {
    let _ = writeln!(out, "<h3 id=\"{}\">{}</h3>", t.id, escape(&t.title));
    let _ = writeln!(out, "<p class=\"caption\">{}</p>", escape(&t.caption));
    if !t.has_ours() {
        out.push_str(
            "<p class=\"caption\"><b>Not measured in this run</b>: published rows only.</p>\n",
        );
    }
    out.push_str("<div class=\"scroll\"><table>\n<thead><tr>");
    // Headers align with their column: left over text, right over numbers.
    let first = t.rows.iter().find(|r| r.kind != RowKind::Heading);
    for (k, h) in t.header.iter().enumerate() {
        let text = first.and_then(|r| r.cells.get(k)).is_some_and(|c| matches!(c, Cell::Text(_)));
        let align = if text { " class=\"text\"" } else { "" };
        let _ = write!(out, "<th{align}>{}</th>", escape(h));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in &t.rows {
        match row.kind {
            RowKind::Heading => {
                let text = row.cells.first().map(|c| c.display()).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "<tr class=\"heading\"><td colspan=\"{}\">{}</td></tr>",
                    t.header.len(),
                    escape(&text)
                );
            }
            kind => {
                let class = if kind == RowKind::Paper { "paper" } else { "ours" };
                let _ = write!(out, "<tr class=\"{class}\">");
                for cell in &row.cells {
                    let align = if matches!(cell, Cell::Text(_)) { " class=\"text\"" } else { "" };
                    let _ = write!(out, "<td{align}>{}</td>", escape(&cell.display()));
                }
                out.push_str("</tr>\n");
            }
        }
    }
    out.push_str("</tbody></table></div>\n");
    out.push_str(&provenance(s, &format!("{}.csv", t.id)));
}

fn figure(out: &mut String, s: &Summary, f: &Figure) {
    let _ = writeln!(out, "<h3>{}</h3>", escape(&f.title));
    // Name the SVG for screen readers; the figure's id is its anchor.
    let svg = f.svg.replacen(
        "<svg ",
        &format!("<svg role=\"img\" aria-label=\"{}\" ", escape(&f.title)),
        1,
    );
    let _ = writeln!(
        out,
        "<figure id=\"{}\">\n{svg}\n<figcaption class=\"caption\">{}</figcaption>\n</figure>",
        f.id,
        escape(&f.caption)
    );
    let data = f.data.as_ref().map_or("summary.json".to_string(), |d| format!("{d}.csv"));
    out.push_str(&provenance(s, &data));
}
