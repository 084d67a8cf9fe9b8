//! Small SVG line plots of how a figure grows with its input (both axes logarithmic, so
//! O(log n) and O(n) read as a flat and a rising line).

use std::fmt::Write as _;

/// One line of a plot.
pub struct Line<'a> {
    /// Legend.
    pub name: &'a str,
    /// Colour.
    pub colour: &'a str,
    /// (x, y) points, x > 0.
    pub points: &'a [(f64, f64)],
}

/// A log-log plot of `lines` (every value > 0).
pub fn svg(title: &str, x_label: &str, y_label: &str, lines: &[Line<'_>]) -> String {
    let (w, h, left, right, top, bottom) = (820.0, 420.0, 80.0, 280.0, 50.0, 60.0);
    let xs = lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
    let (xmin, xmax) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let ys = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1));
    let (ymin, ymax) = ys.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
    // Whole decades around the data.
    let (ly0, ly1) = (
        ymin.max(1e-9).log10().floor(),
        ymax.max(1e-9)
            .log10()
            .ceil()
            .max(ymin.max(1e-9).log10().floor() + 1.0),
    );
    let (lx0, lx1) = (xmin.max(1e-9).ln(), xmax.max(xmin * 1.0001).ln());
    let px = |x: f64| left + (x.max(1e-9).ln() - lx0) / (lx1 - lx0).max(1e-9) * (w - left - right);
    let py = |y: f64| h - bottom - (y.max(1e-9).log10() - ly0) / (ly1 - ly0) * (h - top - bottom);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="24" font-size="15">{title}</text>"#
    );
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="#333"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="#333"/>"##,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    for decade in (ly0 as i32)..=(ly1 as i32) {
        let y = 10f64.powi(decade);
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{:.1}" text-anchor="end">{}</text><line x1="{left}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="#ddd"/>"##,
            left - 6.0,
            py(y) + 4.0,
            short(y),
            py(y),
            w - right,
            py(y)
        );
    }
    let mut ticks: Vec<f64> = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .collect();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    for x in ticks {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            px(x),
            h - bottom + 18.0,
            short(x)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">{x_label}</text>"#,
        (left + w - right) / 2.0,
        h - 16.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{:.1}" transform="rotate(-90 18 {:.1})" text-anchor="middle">{y_label}</text>"#,
        (top + h - bottom) / 2.0,
        (top + h - bottom) / 2.0
    );
    for (i, l) in lines.iter().enumerate() {
        let pts: Vec<String> = l
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            l.colour,
            pts.join(" ")
        );
        for &(x, y) in l.points {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                px(x),
                py(y),
                l.colour
            );
        }
        let ly = top + 20.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="14" height="4" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            w - right + 12.0,
            ly + 4.0,
            l.colour,
            w - right + 32.0,
            ly + 9.0,
            l.name
        );
    }
    let _ = writeln!(s, "</svg>");
    s
}

fn short(v: f64) -> String {
    let (scaled, unit) = if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    if (scaled - scaled.round()).abs() < 1e-6 {
        format!("{scaled:.0}{unit}")
    } else {
        format!("{scaled:.1}{unit}")
    }
}
