/*! The report's figures as SVG strings, drawn with plotters' SVG backend.

Three kinds cover every figure of the report: a [`LineChart`] (accuracy against eps, the
stability band, training curves), a [`Heatmap`] (transferability matrices) and a [`BarChart`]
(training cost). They know nothing about [`Summary`](crate::pipeline::summary::Summary): the
report module turns its numbers into these, so each chart can be read on its own.

Text is left to the browser (`<text>` elements, family `sans-serif`): plotters is built without
its font features, so it only estimates label widths, which is why labels are kept short.
*/

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};

/// Colours of the lines and bars: the Tableau 10 palette, distinct and readable on white.
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The `i`-th palette colour (wrapping), so an item keeps its colour in every figure.
pub fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

const FONT: &str = "sans-serif";
/// Width of the legend column to the right of a line chart, pixels.
const LEGEND_W: u32 = 250;
/// Longest legend label, characters (the legend column has a fixed width).
const LEGEND_CHARS: usize = 34;

type Draw = std::result::Result<(), Box<dyn std::error::Error>>;

/// Runs a drawing function on a fresh SVG canvas and returns the SVG text.
fn svg(
    title: &str,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Draw,
) -> Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| e.into())
            .and_then(|_| draw(&root))
            .and_then(|_| root.present().map_err(|e| e.into()))
            .map_err(|e| Error::Report(format!("figure '{title}': {e}")))?;
    }
    Ok(out)
}

fn text_style(size: u32, h: HPos, v: VPos) -> TextStyle<'static> {
    TextStyle::from((FONT, size).into_font()).pos(Pos::new(h, v))
}

fn shorten(label: &str, max: usize) -> String {
    if label.chars().count() <= max {
        label.to_string()
    } else {
        let cut: String = label.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}

/// An axis tick without trailing zeros: `0.005`, `100`, `2.5`.
fn tick(v: &f64) -> String {
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A tick on an axis of whole numbers: the number, or nothing between two of them.
fn whole_tick(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round())
    } else {
        String::new()
    }
}

/// One line of a [`LineChart`].
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Line colour.
    pub color: RGBColor,
    /// Dashed (published numbers) rather than solid with point markers (ours).
    pub dashed: bool,
    /// Points in data coordinates, in drawing order.
    pub points: Vec<(f64, f64)>,
}

/// A shaded band between two curves of a [`LineChart`] (e.g. min and max over derived paths).
#[derive(Debug, Clone)]
pub struct Band {
    /// Legend label.
    pub label: String,
    /// Fill colour (drawn translucent).
    pub color: RGBColor,
    /// (x, low, high) per point, x increasing.
    pub points: Vec<(f64, f64, f64)>,
}

/// Lines (and bands) on linear axes, with the legend in a column on the right.
#[derive(Debug, Clone)]
pub struct LineChart {
    /// Title above the plot.
    pub title: String,
    /// X axis label.
    pub x_desc: String,
    /// Y axis label.
    pub y_desc: String,
    /// X axis range.
    pub x: (f64, f64),
    /// Y axis range.
    pub y: (f64, f64),
    /// Label only whole numbers on the x axis (epochs).
    pub integer_x: bool,
    /// Bands, drawn under the lines.
    pub bands: Vec<Band>,
    /// Lines.
    pub series: Vec<Series>,
}

impl LineChart {
    /// The chart as an SVG document.
    pub fn svg(&self) -> Result<String> {
        let entries = self.bands.len() + self.series.len();
        // Tall enough for the legend: one 18-pixel line per entry.
        let height = 360.max(40 + 18 * entries as u32);
        svg(&self.title, (560 + LEGEND_W, height), |root| {
            let (plot, legend) = root.split_horizontally(560);
            let mut chart = ChartBuilder::on(&plot)
                .caption(&self.title, (FONT, 16))
                .margin(12)
                .x_label_area_size(44)
                .y_label_area_size(56)
                .build_cartesian_2d(self.x.0..self.x.1, self.y.0..self.y.1)?;
            chart
                .configure_mesh()
                .x_desc(self.x_desc.as_str())
                .y_desc(self.y_desc.as_str())
                .x_label_formatter(if self.integer_x { &whole_tick } else { &tick })
                .y_label_formatter(&tick)
                .max_light_lines(0)
                .bold_line_style(RGBColor(230, 230, 230))
                .draw()?;
            for band in &self.bands {
                let upper = band.points.iter().map(|&(x, _, hi)| (x, hi));
                let lower = band.points.iter().rev().map(|&(x, lo, _)| (x, lo));
                let outline: Vec<(f64, f64)> = upper.chain(lower).collect();
                chart.draw_series(std::iter::once(Polygon::new(outline, band.color.mix(0.2))))?;
            }
            for s in &self.series {
                let style = s.color.stroke_width(2);
                if s.dashed {
                    chart.draw_series(DashedLineSeries::new(s.points.clone(), 7, 5, style))?;
                } else {
                    chart.draw_series(LineSeries::new(s.points.clone(), style).point_size(3))?;
                }
            }
            // The legend, by hand: plotters' own legend sits inside the plot and would hide
            // lines when there are many models.
            let mut y = 40;
            for band in &self.bands {
                legend.draw(&Rectangle::new(
                    [(8, y - 6), (36, y + 6)],
                    band.color.mix(0.2).filled(),
                ))?;
                legend.draw(&Text::new(
                    shorten(&band.label, LEGEND_CHARS),
                    (42, y),
                    text_style(12, HPos::Left, VPos::Center),
                ))?;
                y += 18;
            }
            for s in &self.series {
                let style = s.color.stroke_width(2);
                if s.dashed {
                    legend.draw(&DashedPathElement::new(vec![(8, y), (36, y)], 7, 5, style))?;
                } else {
                    legend.draw(&PathElement::new(vec![(8, y), (36, y)], style))?;
                    legend.draw(&Circle::new((22, y), 3, s.color.filled()))?;
                }
                legend.draw(&Text::new(
                    shorten(&s.label, LEGEND_CHARS),
                    (42, y),
                    text_style(12, HPos::Left, VPos::Center),
                ))?;
                y += 18;
            }
            Ok(())
        })
    }
}

/// A square matrix of values in [0, 1], one coloured cell each, the value printed inside.
#[derive(Debug, Clone)]
pub struct Heatmap {
    /// Title above the matrix.
    pub title: String,
    /// Row and column labels.
    pub labels: Vec<String>,
    /// Values in [0, 1], `values[row][column]`.
    pub values: Vec<Vec<f64>>,
    /// Label of the rows (left).
    pub row_desc: String,
    /// Label of the columns (top).
    pub col_desc: String,
    /// How each value is printed in its cell.
    pub format: fn(f64) -> String,
}

/// White for 0, dark red for 1: more red = more transferable; grey = not measured (NaN).
fn heat(v: f64) -> RGBColor {
    if !v.is_finite() {
        return RGBColor(220, 220, 220);
    }
    let t = v.clamp(0.0, 1.0);
    let mix = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(mix(255.0, 165.0), mix(255.0, 15.0), mix(255.0, 21.0))
}

impl Heatmap {
    /// The matrix as an SVG document.
    pub fn svg(&self) -> Result<String> {
        let n = self.labels.len() as i32;
        let longest = self.labels.iter().map(|l| l.chars().count()).max().unwrap_or(1) as i32;
        let cell = 60.max(7 * longest.min(14) + 8);
        let (left, top) = (16 + 7 * longest.min(20) + 10, 74);
        let width = (left + n * cell + 20).max(360) as u32;
        let height = (top + n * cell + 30) as u32;
        svg(&self.title, (width, height), |root| {
            root.draw(&Text::new(
                self.title.clone(),
                (width as i32 / 2, 8),
                text_style(16, HPos::Center, VPos::Top),
            ))?;
            let grid_mid = left + n * cell / 2;
            root.draw(&Text::new(
                self.col_desc.clone(),
                (grid_mid, 32),
                text_style(12, HPos::Center, VPos::Top),
            ))?;
            root.draw(&Text::new(
                self.row_desc.clone(),
                (8, top + n * cell + 8),
                text_style(12, HPos::Left, VPos::Top),
            ))?;
            for (k, label) in self.labels.iter().enumerate() {
                let k = k as i32;
                let short = shorten(label, 20);
                root.draw(&Text::new(
                    shorten(label, 14),
                    (left + k * cell + cell / 2, top - 6),
                    text_style(11, HPos::Center, VPos::Bottom),
                ))?;
                root.draw(&Text::new(
                    short,
                    (left - 6, top + k * cell + cell / 2),
                    text_style(11, HPos::Right, VPos::Center),
                ))?;
            }
            for (i, row) in self.values.iter().enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    let (x0, y0) = (left + j as i32 * cell, top + i as i32 * cell);
                    root.draw(&Rectangle::new(
                        [(x0, y0), (x0 + cell, y0 + cell)],
                        heat(v).filled(),
                    ))?;
                    root.draw(&Rectangle::new(
                        [(x0, y0), (x0 + cell, y0 + cell)],
                        RGBColor(200, 200, 200),
                    ))?;
                    let ink = if v > 0.55 { WHITE } else { BLACK };
                    let style = text_style(12, HPos::Center, VPos::Center).color(&ink);
                    let text = if v.is_finite() { (self.format)(v) } else { "n/a".into() };
                    root.draw(&Text::new(text, (x0 + cell / 2, y0 + cell / 2), style))?;
                }
            }
            Ok(())
        })
    }
}

/// Horizontal bars, one per labelled item.
#[derive(Debug, Clone)]
pub struct BarChart {
    /// Title above the chart.
    pub title: String,
    /// X axis label.
    pub x_desc: String,
    /// (label, value, colour) per bar, top to bottom.
    pub bars: Vec<(String, f64, RGBColor)>,
    /// How each value is printed at the end of its bar.
    pub format: fn(f64) -> String,
}

impl BarChart {
    /// The chart as an SVG document.
    pub fn svg(&self) -> Result<String> {
        let n = self.bars.len().max(1);
        let max = self.bars.iter().map(|b| b.1).fold(0.0, f64::max);
        // Room after the longest bar for its printed value.
        let x_max = if max > 0.0 { max * 1.25 } else { 1.0 };
        let height = 110 + 30 * n as u32;
        svg(&self.title, (760, height), |root| {
            let mut chart = ChartBuilder::on(root)
                .caption(&self.title, (FONT, 16))
                .margin(12)
                .x_label_area_size(44)
                .y_label_area_size(230)
                .build_cartesian_2d(0.0..x_max, n as f64..0.0)?;
            chart
                .configure_mesh()
                .disable_y_mesh()
                .y_labels(0)
                .x_desc(self.x_desc.as_str())
                .x_label_formatter(&tick)
                .max_light_lines(0)
                .bold_line_style(RGBColor(230, 230, 230))
                .draw()?;
            for (i, (label, value, color)) in self.bars.iter().enumerate() {
                let y = i as f64;
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(0.0, y + 0.2), (*value, y + 0.8)],
                    color.filled(),
                )))?;
                // Labels in pixels next to the axis and the bar's end.
                let (ax, ay) = chart.backend_coord(&(0.0, y + 0.5));
                let (bx, _) = chart.backend_coord(&(*value, y + 0.5));
                root.draw(&Text::new(
                    shorten(label, 32),
                    (ax - 8, ay),
                    text_style(12, HPos::Right, VPos::Center),
                ))?;
                root.draw(&Text::new(
                    (self.format)(*value),
                    (bx + 6, ay),
                    text_style(12, HPos::Left, VPos::Center),
                ))?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the SVG has a `<text>` element reading `text` (plotters puts it on its own line).
    fn has_text(svg: &str, text: &str) -> bool {
        svg.contains(&format!("\n{text}\n</text>"))
    }

    #[test]
    fn charts_are_svg_documents_with_their_labels() {
        let line = LineChart {
            title: "t & <x>".into(),
            x_desc: "eps".into(),
            y_desc: "acc".into(),
            x: (0.0, 0.1),
            y: (0.0, 100.0),
            integer_x: false,
            bands: vec![Band {
                label: "band".into(),
                color: color(0),
                points: vec![(0.0, 1.0, 2.0), (0.1, 0.5, 3.0)],
            }],
            series: vec![
                Series {
                    label: "ours".into(),
                    color: color(1),
                    dashed: false,
                    points: vec![(0.0, 90.0), (0.05, 40.0)],
                },
                Series {
                    label: "paper".into(),
                    color: color(1),
                    dashed: true,
                    points: vec![(0.0, 88.0), (0.05, 39.0)],
                },
            ],
        }
        .svg()
        .unwrap();
        assert!(line.starts_with("<svg"), "{line}");
        assert!(has_text(&line, "t &amp; &lt;x&gt;"), "{line}");
        assert!(has_text(&line, "ours") && has_text(&line, "paper"), "{line}");
        let heat = Heatmap {
            title: "m".into(),
            labels: vec!["a".into(), "b".into()],
            values: vec![vec![1.0, 0.25], vec![0.5, 0.0]],
            row_desc: "source".into(),
            col_desc: "target".into(),
            format: |v| format!("{:.0}", v * 100.0),
        }
        .svg()
        .unwrap();
        assert!(has_text(&heat, "25") && has_text(&heat, "100"), "{heat}");
        let bars = BarChart {
            title: "cost".into(),
            x_desc: "s".into(),
            bars: vec![("first".into(), 3.0, color(0)), ("second".into(), 0.0, color(1))],
            format: |v| format!("{v} s"),
        }
        .svg()
        .unwrap();
        assert!(has_text(&bars, "first") && has_text(&bars, "3 s"));
    }
}
