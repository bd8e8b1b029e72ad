//! Charts as inline SVG, drawn on the server: no JavaScript, no front-end build, and they print.

use maud::{Markup, html};

/// Colours by meaning (status, integrity, severity), shared by charts and badges.
pub(super) fn colour(key: &str) -> &'static str {
    match key {
        "active" | "verified" | "low" => "#2f9e44",
        "pending" | "unknown" | "medium" => "#868e96",
        "quarantined" | "stale" | "high" => "#f08c00",
        "revoked" | "failed" | "critical" => "#e03131",
        "onboarding" => "#1971c2",
        "rejections" => "#c92a2a",
        _ => "#5c7cfa",
    }
}

/// One horizontal bar split by share, with a legend: a breakdown of the whole fleet.
pub(super) fn stacked_bar(parts: &[(String, i64)], label: &str) -> Markup {
    let total: i64 = parts.iter().map(|(_, n)| *n).sum();
    let width = 600.0;
    let mut x = 0.0;
    let segments: Vec<(f64, f64, &str, i64, &str)> = parts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| {
            let w = if total > 0 {
                width * *n as f64 / total as f64
            } else {
                0.0
            };
            let seg = (x, w, colour(k), *n, k.as_str());
            x += w;
            seg
        })
        .collect();
    html! {
        svg class="chart" viewBox="0 0 600 34" role="img" aria-label=(label) {
            title { (label) }
            @if total == 0 {
                rect x="0" y="4" width="600" height="26" fill="#e9ecef" {}
            }
            @for (x, w, fill, n, k) in &segments {
                rect x=(format!("{x:.1}")) y="4" width=(format!("{w:.1}")) height="26" fill=(fill) {
                    title { (k) ": " (n) }
                }
            }
        }
        ul.legend {
            @for (k, n) in parts {
                li { (swatch(k)) " " (k) " " strong { (n) } }
            }
        }
    }
}

/// A small coloured square (SVG, so no inline style is needed under the page's CSP).
pub(super) fn swatch(key: &str) -> Markup {
    html! {
        svg.swatch viewBox="0 0 10 10" width="10" height="10" aria-hidden="true" {
            rect width="10" height="10" fill=(colour(key)) {}
        }
    }
}

/// Horizontal bars with labels (e.g. firmware versions), largest first.
pub(super) fn bar_list(items: &[(String, i64)], label: &str) -> Markup {
    let max = items.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let row = 26;
    let height = (items.len().max(1) * row) as i64;
    html! {
        svg class="chart" viewBox=(format!("0 0 600 {height}")) role="img" aria-label=(label) {
            title { (label) }
            @for (i, (k, n)) in items.iter().enumerate() {
                @let y = i * row;
                @let w = 360.0 * *n as f64 / max as f64;
                text x="0" y=(y + 17) class="axis" { (truncate(k, 28)) }
                rect x="200" y=(y + 4) width=(format!("{w:.1}")) height="18" fill=(colour("firmware")) {}
                text x=(format!("{:.1}", 206.0 + w)) y=(y + 17) class="axis" { (n) }
            }
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

/// A time series as vertical bars (24 buckets), with the first and last bucket times and the
/// peak marked.
pub(super) fn time_bars(points: &[(String, i64)], series: &str, label: &str) -> Markup {
    let max = points.iter().map(|(_, n)| *n).max().unwrap_or(0);
    let scale = max.max(1) as f64;
    let n = points.len().max(1);
    let slot = 560.0 / n as f64;
    let plot = 110.0;
    let total: i64 = points.iter().map(|(_, c)| *c).sum();
    html! {
        svg class="chart" viewBox="0 0 600 150" role="img" aria-label=(label) data-total=(total) {
            title { (label) }
            line x1="30" y1="120" x2="590" y2="120" stroke="#adb5bd" {}
            text x="0" y="14" class="axis" { (max) }
            text x="0" y="120" class="axis" { "0" }
            @for (i, (start, count)) in points.iter().enumerate() {
                @let h = plot * *count as f64 / scale;
                rect x=(format!("{:.1}", 30.0 + i as f64 * slot + 1.0)) y=(format!("{:.1}", 120.0 - h))
                    width=(format!("{:.1}", (slot - 2.0).max(1.0))) height=(format!("{h:.1}")) fill=(colour(series)) {
                    title { (start) ": " (count) }
                }
            }
            @if let Some((first, _)) = points.first() {
                text x="30" y="140" class="axis" { (short_time(first)) }
            }
            @if let Some((last, _)) = points.last() {
                text x="590" y="140" class="axis" text-anchor="end" { (short_time(last)) }
            }
        }
    }
}

/// `2026-11-24T03:00:00.000Z` → `11-24 03:00`.
pub(super) fn short_time(rfc3339: &str) -> String {
    match (rfc3339.get(5..10), rfc3339.get(11..16)) {
        (Some(d), Some(t)) => format!("{d} {t}"),
        _ => rfc3339.to_owned(),
    }
}
