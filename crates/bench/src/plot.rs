//! PNG plots of a run's results, written next to latest.md: forwarding efficiency and added
//! delay against meeting size for both SFUs, and the capacity search's trials against the
//! limits.
//!
//! **Owns** only drawing: every value comes from the same [`Traffic`] figures as the
//! markdown table. Text is drawn in a font embedded in this binary (a subset of DejaVu Sans,
//! `assets/`), so the plots need no system fonts. Each measurement is a point (hollow when
//! it is outside the capacity limits); the line joins the mean at each size.

use crate::capacity::{self, MAX_ADDED_DELAY_P99_MS, MAX_STREAM_LOSS_P99};
use crate::report::{added_delay_ms, Data, Outcome, Role, Traffic};
use anyhow::{anyhow, Context};
use plotters::coord::combinators::IntoLogRange;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

/// DejaVu Sans cut down to the characters the plots use (licence beside it).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
/// The family plotters uses when none is named; registered with [`FONT`].
const FAMILY: &str = "sans-serif";
/// Smallest value a logarithmic axis shows; smaller values (a zero loss, a delay below the
/// baseline) are drawn on it.
const LOG_FLOOR: f64 = 0.01;

const SEALROOM: RGBColor = RGBColor(0x1f, 0x6f, 0xc0);
const JANUS: RGBColor = RGBColor(0xd0, 0x4a, 0x1c);
const LIMIT: RGBColor = RGBColor(0x60, 0x60, 0x60);

type Panel<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;
type LogPanel<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<RangedCoordf64, plotters::coord::combinators::LogCoord<f64>>,
>;
type Area<'b> = DrawingArea<BitMapBackend<'b>, Shift>;
/// A figure of a measured meeting.
type Value<'v> = &'v dyn Fn(&Point) -> f64;
/// (N, value, within the limits) of each measurement.
type Marks = Vec<(f64, f64, bool)>;

fn font_ready() -> anyhow::Result<()> {
    static READY: OnceLock<bool> = OnceLock::new();
    let ok = *READY
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded font does not parse"))
    }
}

/// One measured meeting.
struct Point<'a> {
    sfu: &'static str,
    video: bool,
    n: usize,
    t: &'a Traffic,
    /// Within the capacity limits.
    within: bool,
    /// A trial of a capacity search (not a fixed-size forwarding scenario).
    search: bool,
}

fn points(results: &[Outcome], direct: Option<(f64, f64)>) -> Vec<Point<'_>> {
    let within = |t: &Traffic| capacity::verdict(t, direct.map(|d| d.1)).pass();
    let mut out = Vec::new();
    // The floor's null forwarder is in its own table, not in the SFUs' plots.
    for o in results.iter().filter(|o| !o.sfu.starts_with("floor")) {
        match &o.data {
            // Simulcast meetings are in the table, not in the plots' audio/video lines.
            Ok(Data::Traffic(t)) if !t.simulcast => out.push(Point {
                sfu: o.sfu,
                video: t.video,
                n: t.n,
                t,
                within: within(t),
                search: false,
            }),
            Ok(Data::Capacity(c)) => {
                for trial in &c.trials {
                    if let Ok(t) = &trial.result {
                        out.push(Point {
                            sfu: o.sfu,
                            video: c.video,
                            n: trial.n,
                            t,
                            within: trial.verdict.pass(),
                            search: matches!(trial.role, Role::Search(_)),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn color(sfu: &str) -> RGBColor {
    if sfu == "janus" {
        JANUS
    } else {
        SEALROOM
    }
}

fn display(sfu: &str) -> &'static str {
    if sfu == "janus" {
        "Janus"
    } else {
        "sealroom"
    }
}

fn kind(video: bool) -> &'static str {
    if video {
        "audio + video meetings"
    } else {
        "audio-only meetings"
    }
}

/// Every plot this module can write.
const NAMES: [&str; 3] = ["efficiency.png", "delay.png", "capacity.png"];

/// Write every plot the results have data for into `dir`, and remove the others (left from
/// an earlier run, they would not match the latest.md beside them); the names written.
pub fn write_all(
    dir: &Path,
    results: &[Outcome],
    direct: Option<(f64, f64)>,
) -> anyhow::Result<Vec<String>> {
    let written = draw_all(dir, results, direct)?;
    for name in NAMES.iter().filter(|n| !written.iter().any(|w| w == *n)) {
        let path = dir.join(name);
        if path.exists() {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing the stale {}", path.display()))?;
        }
    }
    Ok(written)
}

fn draw_all(
    dir: &Path,
    results: &[Outcome],
    direct: Option<(f64, f64)>,
) -> anyhow::Result<Vec<String>> {
    font_ready()?;
    let pts = points(results, direct);
    let mut written = Vec::new();
    if pts.is_empty() {
        return Ok(written);
    }
    let mut save = |name: &str, (w, h): (u32, u32), draw: &dyn Fn(Area) -> anyhow::Result<()>| {
        let mut buf = vec![0u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            root.fill(&WHITE)?;
            draw(root.clone())?;
            root.present()?;
        }
        png_file(&dir.join(name), &buf, (w, h)).with_context(|| format!("writing {name}"))?;
        written.push(name.to_string());
        anyhow::Ok(())
    };
    save(NAMES[0], (1400, 600), &|root| efficiency(root, &pts))?;
    save(NAMES[1], (1400, 600), &|root| delay(root, &pts, direct))?;
    if pts.iter().any(|p| p.search) {
        save(NAMES[2], (1400, 1000), &|root| {
            capacity_plot(root, results, &pts, direct)
        })?;
    }
    Ok(written)
}

fn png_file(path: &Path, rgb: &[u8], (w, h): (u32, u32)) -> anyhow::Result<()> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut enc = png::Encoder::new(file, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()?.write_image_data(rgb)?;
    Ok(())
}

/// The mean of `value` at each size, and every point, of one SFU and kind.
fn series(
    pts: &[Point],
    sfu: &str,
    video: bool,
    value: impl Fn(&Point) -> f64,
) -> (Vec<(f64, f64)>, Marks) {
    let mut by_n: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut each = Vec::new();
    for p in pts.iter().filter(|p| p.sfu == sfu && p.video == video) {
        let v = value(p);
        if v.is_finite() {
            by_n.entry(p.n).or_default().push(v);
            each.push((p.n as f64, v, p.within));
        }
    }
    let line = by_n
        .into_iter()
        .map(|(n, vs)| (n as f64, vs.iter().sum::<f64>() / vs.len() as f64))
        .collect();
    (line, each)
}

fn sfus(pts: &[Point]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for p in pts {
        if !out.contains(&p.sfu) {
            out.push(p.sfu);
        }
    }
    out
}

/// The x range of one kind's panel: 0 to a little past its largest size (at least 10, so
/// that the ticks fall on whole sizes).
fn x_range(pts: &[Point], video: bool) -> std::ops::Range<f64> {
    let max = pts
        .iter()
        .filter(|p| p.video == video)
        .map(|p| p.n)
        .max()
        .unwrap_or(4);
    0.0..(max as f64 * 1.08 + 1.0).max(10.0)
}

/// Tick labels of the size axis.
fn size_label(v: &f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

const X_DESC: &str = "meeting size N (each participant publishes and receives all others)";

fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.5))
        .label_font((FAMILY, 16))
        .legend_area_size(36)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow!("drawing a legend: {e}"))
}

/// A legend sample of a dashed line.
macro_rules! dashed {
    ($c:expr) => {
        move |(x, y)| {
            EmptyElement::at((x, y))
                + PathElement::new(vec![(0, 0), (6, 0)], $c.stroke_width(3))
                + PathElement::new(vec![(10, 0), (16, 0)], $c.stroke_width(3))
                + PathElement::new(vec![(20, 0), (26, 0)], $c.stroke_width(3))
        }
    };
}

/// Filled when within the limits, hollow when not.
fn marker(x: f64, y: f64, within: bool, c: RGBColor) -> Circle<(f64, f64), i32> {
    let style = if within {
        c.filled()
    } else {
        c.stroke_width(2)
    };
    Circle::new((x, y), 5, style)
}

fn hollow_note(chart: &mut Panel) -> anyhow::Result<()> {
    chart
        .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
        .label("hollow: outside the limits")
        .legend(|(x, y)| Circle::new((x + 10, y), 5, BLACK.stroke_width(2)));
    Ok(())
}

fn efficiency(root: Area, pts: &[Point]) -> anyhow::Result<()> {
    let root = root.titled(
        "Forwarding efficiency: egress media packets per SFU CPU-second (higher is better)",
        (FAMILY, 26),
    )?;
    for (area, video) in root.split_evenly((1, 2)).iter().zip([false, true]) {
        let value = |p: &Point| p.t.efficiency();
        let ymax = pts
            .iter()
            .filter(|p| p.video == video)
            .map(value)
            .filter(|v| v.is_finite())
            .fold(1.0f64, f64::max);
        let mut chart = ChartBuilder::on(area)
            .caption(kind(video), (FAMILY, 22))
            .margin(18)
            .x_label_area_size(55)
            .y_label_area_size(90)
            .build_cartesian_2d(x_range(pts, video), 0.0..ymax * 1.15)?;
        chart
            .configure_mesh()
            .x_desc(X_DESC)
            .y_desc("egress media packets per SFU CPU-second")
            .label_style((FAMILY, 16))
            .axis_desc_style((FAMILY, 17))
            .x_label_formatter(&size_label)
            .light_line_style(BLACK.mix(0.04))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        for sfu in sfus(pts) {
            let c = color(sfu);
            let (line, each) = series(pts, sfu, video, value);
            chart
                .draw_series(LineSeries::new(line, c.stroke_width(2)))?
                .label(display(sfu))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 22, y)], c.stroke_width(3))
                });
            chart.draw_series(each.into_iter().map(|(x, y, w)| marker(x, y, w, c)))?;
        }
        hollow_note(&mut chart)?;
        legend(&mut chart)?;
    }
    Ok(())
}

/// Tick labels of a logarithmic axis: 0.01, 0.1, 1, 10, 100 …
fn log_label(v: &f64) -> String {
    if *v >= 1.0 {
        format!("{v:.0}")
    } else {
        let decimals = (-v.log10()).ceil().max(0.0) as usize;
        format!("{v:.decimals$}")
    }
}

/// The range of a logarithmic axis that shows `max` (at least up to 100).
fn log_range(max: f64) -> std::ops::Range<f64> {
    // A hair below the floor, so that the floor gets its tick label.
    LOG_FLOOR * 0.99..(max * 3.0).max(100.0)
}

fn delay(root: Area, pts: &[Point], direct: Option<(f64, f64)>) -> anyhow::Result<()> {
    let root = root.titled(
        "Delay added by the SFU, p50 and p99, over the delay without an SFU",
        (FAMILY, 26),
    )?;
    let p50 = |p: &Point| p.t.delay_p50_ms;
    let p99 = |p: &Point| p.t.delay_p99_ms;
    for (area, video) in root.split_evenly((1, 2)).iter().zip([false, true]) {
        let ymax = pts
            .iter()
            .filter(|p| p.video == video)
            .map(p99)
            .filter(|v| v.is_finite())
            .fold(1.0f64, f64::max);
        let mut chart: LogPanel = ChartBuilder::on(area)
            .caption(kind(video), (FAMILY, 22))
            .margin(18)
            .x_label_area_size(55)
            .y_label_area_size(90)
            .build_cartesian_2d(x_range(pts, video), log_range(ymax).log_scale())?;
        chart
            .configure_mesh()
            .x_desc(X_DESC)
            .y_desc("added delay, ms (log scale; ≤ 0.01 drawn at 0.01)")
            .label_style((FAMILY, 16))
            .axis_desc_style((FAMILY, 17))
            .x_label_formatter(&size_label)
            .light_line_style(BLACK.mix(0.04))
            .y_label_formatter(&log_label)
            .draw()?;
        let xr = x_range(pts, video);
        chart
            .draw_series(DashedLineSeries::new(
                [
                    (xr.start, MAX_ADDED_DELAY_P99_MS),
                    (xr.end, MAX_ADDED_DELAY_P99_MS),
                ],
                8,
                6,
                LIMIT.stroke_width(2),
            ))?
            .label(format!("limit for p99: {MAX_ADDED_DELAY_P99_MS:.0} ms"))
            .legend(dashed!(LIMIT));
        for sfu in sfus(pts) {
            let c = color(sfu);
            let quantiles: [(&str, Value, Option<f64>); 2] = [
                ("p50", &p50, direct.map(|d| d.0)),
                ("p99", &p99, direct.map(|d| d.1)),
            ];
            for (q, f, base) in quantiles {
                let (line, each) = series(pts, sfu, video, |p| {
                    added_delay_ms(f(p), base).max(LOG_FLOOR)
                });
                let label = format!("{} {q}", display(sfu));
                if q == "p50" {
                    chart
                        .draw_series(LineSeries::new(line, c.stroke_width(2)))?
                        .label(label)
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 22, y)], c.stroke_width(3))
                        });
                } else {
                    chart
                        .draw_series(DashedLineSeries::new(line, 10, 5, c.stroke_width(2)))?
                        .label(label)
                        .legend(dashed!(c));
                }
                chart.draw_series(each.into_iter().map(|(x, y, w)| {
                    let style = if w { c.filled() } else { c.stroke_width(2) };
                    Circle::new((x, y), if q == "p50" { 4 } else { 5 }, style)
                }))?;
            }
        }
        legend(&mut chart)?;
    }
    Ok(())
}

fn capacity_plot(
    root: Area,
    results: &[Outcome],
    pts: &[Point],
    direct: Option<(f64, f64)>,
) -> anyhow::Result<()> {
    let root = root.titled(
        "Capacity search: every trial against the limits (each on a fresh SFU)",
        (FAMILY, 26),
    )?;
    let search: Vec<&Point> = pts.iter().filter(|p| p.search).collect();
    let areas = root.split_evenly((2, 2));
    let loss = |p: &Point| 100.0 * p.t.stream_loss_p99;
    let delay = |p: &Point| added_delay_ms(p.t.delay_p99_ms, direct.map(|d| d.1));
    let rows: [(&str, &str, f64, Value); 2] = [
        (
            "p99 stream loss, % (log scale; ≤ 0.01 drawn at 0.01)",
            "limit: 1 %",
            100.0 * MAX_STREAM_LOSS_P99,
            &loss,
        ),
        (
            "p99 added delay, ms (log scale; ≤ 0.01 drawn at 0.01)",
            "limit: 10 ms",
            MAX_ADDED_DELAY_P99_MS,
            &delay,
        ),
    ];
    for (i, area) in areas.iter().enumerate() {
        let (desc, limit_label, limit, value) = rows[i / 2];
        let video = i % 2 == 1;
        let of: Vec<&Point> = search
            .iter()
            .copied()
            .filter(|p| p.video == video)
            .collect();
        let ymax = of
            .iter()
            .map(|p| value(p))
            .filter(|v| v.is_finite())
            .fold(limit, f64::max);
        let xr = x_range(pts, video);
        let mut chart: LogPanel = ChartBuilder::on(area)
            .caption(kind(video), (FAMILY, 20))
            .margin(14)
            .x_label_area_size(50)
            .y_label_area_size(90)
            .build_cartesian_2d(xr.clone(), log_range(ymax).log_scale())?;
        chart
            .configure_mesh()
            .x_desc(X_DESC)
            .y_desc(desc)
            .label_style((FAMILY, 15))
            .axis_desc_style((FAMILY, 15))
            .x_label_formatter(&size_label)
            .light_line_style(BLACK.mix(0.04))
            .y_label_formatter(&log_label)
            .draw()?;
        chart
            .draw_series(DashedLineSeries::new(
                [(xr.start, limit), (xr.end, limit)],
                8,
                6,
                LIMIT.stroke_width(2),
            ))?
            .label(limit_label)
            .legend(dashed!(LIMIT));
        for o in results {
            let Ok(Data::Capacity(c)) = &o.data else {
                continue;
            };
            if c.video != video {
                continue;
            }
            let col = color(o.sfu);
            let mut each: Marks = of
                .iter()
                .filter(|p| p.sfu == o.sfu)
                .map(|p| (p.n as f64, value(p).max(LOG_FLOOR), p.within))
                .collect();
            each.sort_by(|a, b| a.0.total_cmp(&b.0));
            let label = match c.capacity {
                Some(n) if c.reached_max => {
                    format!("{}: ≥ {n} (every size passed)", display(o.sfu))
                }
                Some(n) => format!("{}: capacity N = {n}", display(o.sfu)),
                None => format!("{}: no size passed", display(o.sfu)),
            };
            chart
                .draw_series(LineSeries::new(
                    each.iter().map(|(x, y, _)| (*x, *y)),
                    col.mix(0.5).stroke_width(1),
                ))?
                .label(label)
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, col.filled()));
            chart.draw_series(each.iter().map(|&(x, y, w)| marker(x, y, w, col)))?;
            if let Some(n) = c.capacity {
                let top = log_range(ymax).end;
                chart.draw_series(DashedLineSeries::new(
                    [(n as f64, LOG_FLOOR), (n as f64, top)],
                    4,
                    4,
                    col.stroke_width(1),
                ))?;
            }
        }
        legend(&mut chart)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::Phase;
    use crate::report::{CapacityResult, Trial};

    /// A meeting of `n` with delay and loss growing with its size, `cpu` scaling the SFU's.
    fn measured(n: usize, video: bool, cpu: f64) -> Traffic {
        let mut t = Traffic::example(n, video);
        t.sfu_cpu_s *= cpu * (n * n) as f64 / 16.0;
        t.delay_p50_ms = 0.2 + n as f64 / 20.0;
        t.delay_p99_ms = 0.5 + (n as f64 / 6.0).powi(3);
        t.stream_loss_p99 = if n > 14 { 0.05 } else { 0.0 };
        t
    }

    fn search(video: bool, cpu: f64) -> CapacityResult {
        let direct = Some(0.3);
        let trial = |n, role| Trial::new(n, role, Ok(measured(n, video, cpu)), direct);
        let (grow, bisect) = (Role::Search(Phase::Grow), Role::Search(Phase::Bisect));
        let trials = vec![
            trial(4, grow),
            trial(8, grow),
            trial(12, grow),
            trial(16, grow),
            trial(10, bisect),
            trial(11, bisect),
            trial(7, Role::Share(0.5)),
            trial(10, Role::Share(0.9)),
        ];
        let capacity = trials
            .iter()
            .filter(|t| t.verdict.pass() && matches!(t.role, Role::Search(_)))
            .map(|t| t.n)
            .max();
        CapacityResult {
            video,
            max_n: 48,
            capacity,
            reached_max: false,
            trials,
        }
    }

    #[test]
    fn plots_are_written_as_pngs() {
        let mut results = Vec::new();
        for video in [false, true] {
            for n in [4, 8, 12] {
                let name = format!("N={n}");
                results.push(Outcome::traffic(
                    name.clone(),
                    "sealroom",
                    Ok(measured(n, video, 1.2)),
                ));
                results.push(Outcome::traffic(name, "janus", Ok(measured(n, video, 1.0))));
            }
            results.push(Outcome::capacity(
                "c".into(),
                "sealroom",
                search(video, 1.2),
            ));
            results.push(Outcome::capacity("c".into(), "janus", search(video, 1.0)));
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let written = write_all(dir.path(), &results, Some((0.1, 0.3))).expect("plots");
        assert_eq!(written, NAMES);
        for name in written {
            let bytes = std::fs::read(dir.path().join(&name)).expect("the file");
            assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{name} is no PNG");
            assert!(bytes.len() > 10_000, "{name} is nearly empty");
        }
        // A later run without capacity searches leaves no capacity plot behind.
        results.retain(|o| !matches!(o.data, Ok(Data::Capacity(_))));
        let written = write_all(dir.path(), &results, None).expect("plots");
        assert_eq!(written, NAMES[..2]);
        assert!(!dir.path().join(NAMES[2]).exists());
    }
}
