//! Charts drawn on the server as SVG: a stepped time chart (usage holds
//! its value until the next sample) and a bar chart, each with labelled
//! axes in readable units. Colours come from the stylesheet (classes
//! `s0`..`s5`), so the markup has no inline style for the CSP to refuse.

use maud::{html, Markup};

const W: f64 = 640.0;
const H: f64 = 240.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 40.0;

/// What values measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Seconds,
}

/// One line of a time chart.
pub struct Series {
    pub label: String,
    /// (unix ms, value), oldest first.
    pub points: Vec<(i64, f64)>,
}

/// The scale of a value axis: divisor, unit name and tick step.
struct Scale {
    div: f64,
    unit: &'static str,
    step: f64,
    max: f64,
}

fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 2.5 {
        2.5
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn scale(max: f64, unit: Unit) -> Scale {
    let (div, name) = match unit {
        Unit::Bytes => {
            let units = [
                (1.0, "B"),
                (1024.0, "KiB"),
                (1024.0 * 1024.0, "MiB"),
                (1024.0 * 1024.0 * 1024.0, "GiB"),
                (1024f64.powi(4), "TiB"),
            ];
            units
                .iter()
                .rev()
                .find(|(d, _)| max / d >= 1.0)
                .copied()
                .unwrap_or(units[0])
        }
        Unit::Seconds => {
            if max >= 120.0 {
                (60.0, "min")
            } else if max < 1.0 {
                (0.001, "ms")
            } else {
                (1.0, "s")
            }
        }
    };
    let top = (max / div).max(1e-9);
    let step = nice_step(top / 4.0);
    let ticks = (top / step).ceil().max(1.0);
    Scale {
        div,
        unit: name,
        step,
        max: ticks * step * div,
    }
}

fn fmt_tick(v: f64) -> String {
    if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else if (v * 10.0).fract().abs() < 1e-9 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// `MM-DD` or `HH:MM` (UTC) of a unix-ms time.
fn time_label(ms: i64, days: bool) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    if days {
        s[5..10].to_owned()
    } else {
        s[11..16].to_owned()
    }
}

fn value_axis(s: &Scale) -> Markup {
    let plot_h = H - TOP - BOTTOM;
    let ticks = (s.max / s.div / s.step).round() as usize;
    html! {
        g.axis {
            line x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(H - BOTTOM) {}
            @for i in 0..=ticks {
                @let v = i as f64 * s.step;
                @let y = H - BOTTOM - plot_h * (v * s.div / s.max);
                line.grid x1=(LEFT) y1=(y) x2=(W - RIGHT) y2=(y) {}
                text x=(LEFT - 6.0) y=(y + 4.0) text-anchor="end" { (fmt_tick(v)) }
            }
            text x="14" y=(TOP + plot_h / 2.0) text-anchor="middle"
                transform=(format!("rotate(-90 14 {})", TOP + plot_h / 2.0)) { (s.unit) }
        }
    }
}

/// A stepped line chart of `series` between `from_ms` and `to_ms`; each
/// series holds its last value until `to_ms`.
pub fn time_chart(title: &str, series: &[Series], unit: Unit, from_ms: i64, to_ms: i64) -> Markup {
    let to_ms = to_ms.max(from_ms + 1);
    let max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let sc = scale(max.max(1.0), unit);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let x = |ms: i64| {
        LEFT + plot_w * ((ms.clamp(from_ms, to_ms) - from_ms) as f64 / (to_ms - from_ms) as f64)
    };
    let y = |v: f64| H - BOTTOM - plot_h * (v / sc.max);
    let span = to_ms - from_ms;
    let days = span > 2 * 24 * 3600 * 1000;
    let ticks = 6;
    let id = format!(
        "chart-{}",
        title
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
    );
    html! {
        figure.chart {
            svg viewBox=(format!("0 0 {W} {H}")) role="img" aria-labelledby=(id) {
                title id=(id) { (title) }
                (value_axis(&sc))
                g.axis {
                    line x1=(LEFT) y1=(H - BOTTOM) x2=(W - RIGHT) y2=(H - BOTTOM) {}
                    @for i in 0..=ticks {
                        @let ms = from_ms + span * i / ticks;
                        text x=(x(ms)) y=(H - BOTTOM + 16.0) text-anchor="middle" { (time_label(ms, days)) }
                    }
                    text x=(LEFT + plot_w / 2.0) y=(H - 4.0) text-anchor="middle" {
                        (if days { "date (UTC)" } else { "time (UTC)" })
                    }
                }
                @for (i, s) in series.iter().enumerate() {
                    @if !s.points.is_empty() {
                        path class=(format!("line s{}", i % 6)) d=(step_path(&s.points, to_ms, &x, &y)) {}
                    }
                }
            }
            @if series.iter().all(|s| s.points.is_empty()) {
                figcaption { "No samples yet: usage is sampled at start and then every [ui] usage_sample_interval (an hour by default)." }
            } @else {
                figcaption {
                    ul.legend {
                        @for (i, s) in series.iter().enumerate() {
                            li { span class=(format!("swatch s{}", i % 6)) {} (s.label) }
                        }
                    }
                }
            }
        }
    }
}

fn step_path(
    points: &[(i64, f64)],
    to_ms: i64,
    x: &dyn Fn(i64) -> f64,
    y: &dyn Fn(f64) -> f64,
) -> String {
    let mut d = String::new();
    for (i, (ms, v)) in points.iter().enumerate() {
        let (px, py) = (x(*ms), y(*v));
        if i == 0 {
            d.push_str(&format!("M{px:.1},{py:.1}"));
        } else {
            d.push_str(&format!(" H{px:.1} V{py:.1}"));
        }
    }
    d.push_str(&format!(" H{:.1}", x(to_ms)));
    d
}

/// A bar chart: one bar per (label, value), labels under the bars.
pub fn bar_chart(title: &str, bars: &[(String, f64)], unit: Unit) -> Markup {
    let max = bars.iter().map(|b| b.1).fold(0.0f64, f64::max);
    let sc = scale(
        max.max(match unit {
            Unit::Bytes => 1.0,
            Unit::Seconds => 0.001,
        }),
        unit,
    );
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let n = bars.len().max(1) as f64;
    let slot = plot_w / n;
    let bw = (slot * 0.7).max(1.0);
    let every = (bars.len() / 10).max(1);
    let id = format!(
        "chart-{}",
        title
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
    );
    html! {
        figure.chart {
            svg viewBox=(format!("0 0 {W} {H}")) role="img" aria-labelledby=(id) {
                title id=(id) { (title) }
                (value_axis(&sc))
                g.axis {
                    line x1=(LEFT) y1=(H - BOTTOM) x2=(W - RIGHT) y2=(H - BOTTOM) {}
                    text x=(LEFT + plot_w / 2.0) y=(H - 4.0) text-anchor="middle" { "run" }
                }
                @for (i, (label, v)) in bars.iter().enumerate() {
                    @let h = plot_h * (v / sc.max);
                    @let bx = LEFT + slot * i as f64 + (slot - bw) / 2.0;
                    rect.bar.s0 x=(format!("{bx:.1}")) y=(format!("{:.1}", H - BOTTOM - h)) width=(format!("{bw:.1}")) height=(format!("{h:.1}")) {
                        title { (label) ": " (fmt_tick(v / sc.div)) " " (sc.unit) }
                    }
                    @if i % every == 0 {
                        text.small x=(format!("{:.1}", bx + bw / 2.0)) y=(H - BOTTOM + 14.0) text-anchor="middle" { (label) }
                    }
                }
            }
            figcaption { (title) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_pick_readable_units() {
        let s = scale(3.5 * 1024.0 * 1024.0 * 1024.0, Unit::Bytes);
        assert_eq!(s.unit, "GiB");
        assert_eq!(s.step, 1.0);
        assert_eq!(s.max, 4.0 * 1024.0 * 1024.0 * 1024.0);
        assert_eq!(scale(500.0, Unit::Bytes).unit, "B");
        assert_eq!(scale(0.25, Unit::Seconds).unit, "ms");
        assert_eq!(scale(300.0, Unit::Seconds).unit, "min");
        assert_eq!(nice_step(0.3), 0.5);
    }

    #[test]
    fn charts_render_axes_and_units() {
        let day = 24 * 3600 * 1000;
        let svg = time_chart(
            "usage",
            &[Series {
                label: "tool-a".into(),
                points: vec![(0, 1024.0 * 1024.0), (day, 3.0 * 1024.0 * 1024.0)],
            }],
            Unit::Bytes,
            0,
            5 * day,
        )
        .into_string();
        assert!(svg.contains(">MiB</text>"), "{svg}");
        assert!(svg.contains("date (UTC)"));
        assert!(svg.contains("01-06"), "{svg}");
        let bars = bar_chart("freed", &[("#1".into(), 2048.0)], Unit::Bytes).into_string();
        assert!(bars.contains(">KiB</text>"), "{bars}");
    }
}
