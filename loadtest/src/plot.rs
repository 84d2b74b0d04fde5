//! `--plot FILE.svg`: latency (p50/p99 per second) and rates over time, as a
//! hand-written SVG (polylines, axes, labels; no plotting crate).

use crate::stats::{Report, Second};
use std::fmt::Write as _;

const W: f64 = 960.0;
const PANEL_H: f64 = 260.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const GAP: f64 = 60.0;

type Series<'a> = (&'a str, &'a str, Box<dyn Fn(&Second) -> f64 + 'a>);

/// A "nice" upper bound for an axis: 1, 2 or 5 × 10^k at or above `v`.
pub fn nice_max(v: f64) -> f64 {
    if !v.is_finite() || v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn panel(o: &mut String, top: f64, title: &str, unit: &str, tl: &[Second], series: &[Series<'_>]) {
    let plot_w = W - LEFT - RIGHT;
    let t_max = tl.last().map_or(1.0, |s| s.t).max(1.0);
    let y_max = nice_max(
        tl.iter()
            .flat_map(|s| series.iter().map(move |(_, _, f)| f(s)))
            .fold(0.0, f64::max),
    );
    let x = |t: f64| LEFT + t / t_max * plot_w;
    let y = |v: f64| top + PANEL_H - (v / y_max).clamp(0.0, 1.0) * PANEL_H;
    let _ = writeln!(
        o,
        r##"<text x="{LEFT}" y="{}" font-size="15" font-weight="bold">{}</text>"##,
        top - 10.0,
        esc(title)
    );
    let _ = writeln!(
        o,
        r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="#444"/>"##
    );
    for i in 0..=5 {
        let v = y_max * f64::from(i) / 5.0;
        let yy = y(v);
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            yy + 4.0,
            fmt_num(v)
        );
        let t = t_max * f64::from(i) / 5.0;
        let xx = x(t);
        let _ = writeln!(
            o,
            r##"<line x1="{xx:.1}" y1="{}" x2="{xx:.1}" y2="{:.1}" stroke="#444"/><text x="{xx:.1}" y="{:.1}" font-size="11" text-anchor="middle">{:.0} s</text>"##,
            top + PANEL_H,
            top + PANEL_H + 5.0,
            top + PANEL_H + 18.0,
            t
        );
    }
    let _ = writeln!(
        o,
        r##"<text x="16" y="{:.1}" font-size="12" transform="rotate(-90 16 {:.1})" text-anchor="middle">{}</text>"##,
        top + PANEL_H / 2.0,
        top + PANEL_H / 2.0,
        esc(unit)
    );
    // Phase boundaries.
    let mut last = "";
    for s in tl {
        if s.phase != last {
            let xx = x(s.t);
            let _ = writeln!(
                o,
                r##"<line x1="{xx:.1}" y1="{top}" x2="{xx:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="3,3"/><text x="{:.1}" y="{:.1}" font-size="10" fill="#666">{}</text>"##,
                top + PANEL_H,
                xx + 2.0,
                top + 11.0,
                esc(s.phase)
            );
            last = s.phase;
        }
    }
    for (i, (name, color, f)) in series.iter().enumerate() {
        let pts: Vec<String> = tl
            .iter()
            .map(|s| format!("{:.1},{:.1}", x(s.t), y(f(s))))
            .collect();
        let _ = writeln!(
            o,
            r##"<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{}"/>"##,
            pts.join(" ")
        );
        let ly = top + 14.0 + 18.0 * i as f64;
        let lx = LEFT + plot_w + 12.0;
        let _ = writeln!(
            o,
            r##"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}" font-size="12">{}</text>"##,
            lx + 18.0,
            lx + 24.0,
            ly + 4.0,
            esc(name)
        );
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The whole picture.
pub fn svg(r: &Report) -> String {
    let tl = &r.timeline;
    let h = TOP + 2.0 * PANEL_H + GAP + 50.0;
    let mut o = String::with_capacity(16 * 1024 + tl.len() * 200);
    let _ = writeln!(
        o,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif">"##
    );
    let _ = writeln!(o, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let status = if r.passed { "passed" } else { "FAILED" };
    let _ = writeln!(
        o,
        r##"<text x="{LEFT}" y="18" font-size="13" fill="#333">presence-loadtest {} → {} ({}, {} users, {} subscriptions): {status}</text>"##,
        esc(r.setup.profile.as_deref().unwrap_or("flags")),
        esc(&r.setup.target),
        r.setup.transport,
        r.setup.users,
        r.setup.subscriptions
    );
    let lat: Vec<Series<'_>> = vec![
        (
            "request p50",
            "#1f77b4",
            Box::new(|s: &Second| s.req_p50_ms),
        ),
        (
            "request p99",
            "#aec7e8",
            Box::new(|s: &Second| s.req_p99_ms),
        ),
        (
            "NOTIFY p50",
            "#d62728",
            Box::new(|s: &Second| s.notify_p50_ms),
        ),
        (
            "NOTIFY p99",
            "#ff9896",
            Box::new(|s: &Second| s.notify_p99_ms),
        ),
    ];
    panel(
        &mut o,
        TOP + 10.0,
        "Latency per second (send → final response; change → NOTIFY)",
        "ms",
        tl,
        &lat,
    );
    let rates: Vec<Series<'_>> = vec![
        (
            "requests/s",
            "#1f77b4",
            Box::new(|s: &Second| s.requests as f64),
        ),
        (
            "PUBLISH/s",
            "#2ca02c",
            Box::new(|s: &Second| s.publishes as f64),
        ),
        (
            "NOTIFY/s",
            "#d62728",
            Box::new(|s: &Second| s.notifies as f64),
        ),
        (
            "MESSAGE in/s",
            "#9467bd",
            Box::new(|s: &Second| s.messages_received as f64),
        ),
        (
            "retransmits/s",
            "#7f7f7f",
            Box::new(|s: &Second| s.retransmissions as f64),
        ),
    ];
    panel(
        &mut o,
        TOP + 10.0 + PANEL_H + GAP,
        "Rates",
        "per second",
        tl,
        &rates,
    );
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_bounds() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(3.2), 5.0);
        assert_eq!(nice_max(12.0), 20.0);
        assert_eq!(nice_max(1000.0), 1000.0);
        assert_eq!(nice_max(f64::NAN), 1.0);
    }
}
