//! The status page, `/mirrors` (HTML) and `/mirrors.json`: each mirror's
//! state, why, since when, its freshness per release, latency, weight,
//! countries and share of the last hour's redirects; a world map with the
//! mirrors and where requests come from; and the places where a new mirror
//! would help most.
//!
//! Rendered by one background task whenever the published table changes
//! and once a minute for the counts, never per request: a request for the
//! page gets the last rendering's bytes.
//!
//! - [`map`]: country outlines and the projection, as SVG.
//! - [`coverage`]: sliding windows over the counters, and suggestions.

pub mod coverage;
pub mod map;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::explain::{PAGE_CSS, TreeRow, esc};
use crate::probe::board::{Board, BoardView};
use crate::routing::{Routing, SharedRouting};
use crate::stats::{CELL_DEG, COLS, Tally, cell_centre};
use crate::table::{Health, Mirror};
use coverage::{Counts, Coverage, Target, Windows};

/// The last rendering, which requests for the page get.
pub struct Pages {
    current: ArcSwap<Rendered>,
    /// Asks for a rendering now, counts and all (the demo, tests).
    redraw: tokio::sync::Notify,
}

struct Rendered {
    html: Page,
    json: Page,
}

/// A rendered body, and the same gzipped.
#[derive(Clone)]
pub struct Page {
    pub plain: Bytes,
    /// `None` if compressing failed (writing to a `Vec` does not): the
    /// plain body is sent then.
    pub gzip: Option<Bytes>,
}

impl Page {
    fn new(body: String) -> Page {
        use std::io::Write as _;
        let plain = Bytes::from(body);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let gzip = gz
            .write_all(&plain)
            .and_then(|()| gz.finish())
            .ok()
            .map(Bytes::from);
        Page { plain, gzip }
    }
}

impl Default for Pages {
    fn default() -> Pages {
        Pages {
            current: ArcSwap::from_pointee(Rendered {
                html: Page::new("<!doctype html><title>Mirrors</title><p>Starting.</p>\n".into()),
                json: Page::new("{}\n".into()),
            }),
            redraw: tokio::sync::Notify::new(),
        }
    }
}

impl Pages {
    pub fn html(&self) -> Page {
        self.current.load().html.clone()
    }

    pub fn json(&self) -> Page {
        self.current.load().json.clone()
    }

    /// Renders again now rather than at the next minute.
    pub fn redraw(&self) {
        self.redraw.notify_one();
    }
}

/// How often the renderer looks for a new table; counts are redrawn once
/// a minute.
const LOOK: Duration = Duration::from_millis(250);
const REDRAW: Duration = Duration::from_secs(60);

/// Renders the page whenever the published snapshot changes, and once a
/// minute; runs until the service stops.
pub async fn run(pages: Arc<Pages>, routing: SharedRouting, tally: Arc<Tally>, board: Arc<Board>) {
    let mut windows = Windows::default();
    let mut shown: Option<Arc<Routing>> = None;
    // An origin that stops answering (or answers again) changes the page
    // without changing the table.
    let mut shown_origin = None;
    let mut drawn = Instant::now();
    let mut asked = false;
    loop {
        let current = routing.load_full();
        let origin = Some(board.origin_reachable());
        let changed =
            shown.as_ref().is_none_or(|s| !Arc::ptr_eq(s, &current)) || origin != shown_origin;
        if changed || asked || drawn.elapsed() >= REDRAW {
            let counts = counts(&tally, &current);
            windows.tick(Instant::now(), &counts);
            let (last_hour, last_day) = (windows.last_hour(&counts), windows.last_day(&counts));
            let (routing, board) = (current.clone(), board.view());
            // Suggestions and compression take milliseconds to a good part
            // of a second with traffic from everywhere: not on the task
            // that also publishes probe results.
            let rendered = tokio::task::spawn_blocking(move || {
                let view = View {
                    coverage: coverage::coverage(&last_day, |t| place(&routing, t)),
                    routing: &routing,
                    board,
                    last_hour,
                    at: SystemTime::now(),
                };
                Rendered {
                    html: Page::new(view.html()),
                    json: Page::new(view.json().to_string() + "\n"),
                }
            })
            .await;
            match rendered {
                Ok(r) => pages.current.store(Arc::new(r)),
                Err(e) => tracing::error!(cause = %e, "rendering the status page failed"),
            }
            shown = Some(current);
            shown_origin = origin;
            drawn = Instant::now();
        }
        asked = tokio::select! {
            () = tokio::time::sleep(LOOK) => false,
            () = pages.redraw.notified() => true,
        };
    }
}

/// Every target's counters now, for the mirrors of `routing`'s table and
/// the origin.
fn counts(tally: &Tally, routing: &Routing) -> Counts {
    let mut out: Counts = routing
        .table
        .mirrors()
        .iter()
        .filter_map(|m| Some((Some(m.name.clone()), tally.mirror(&m.name)?.counts())))
        .collect();
    out.insert(None, tally.origin.counts());
    out
}

fn place(routing: &Routing, t: &Target) -> Option<crate::geo::Coord> {
    match t {
        None => routing.policy.origin_at,
        Some(name) => routing.table.find(name).map(|m| m.coord),
    }
}

/// Everything one rendering shows.
struct View<'a> {
    routing: &'a Routing,
    board: BoardView,
    last_hour: HashMap<Target, u64>,
    coverage: Coverage,
    at: SystemTime,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn state(m: &Mirror) -> &'static str {
    match (m.status.eligible, m.status.health) {
        (true, _) => "eligible",
        (false, Health::Up) => "up, not eligible",
        (false, Health::Down) => "down",
        (false, Health::Unknown) => "not probed yet",
    }
}

/// A release's cell in the mirror table: each tree's state, with what the
/// last round found on hover; the release's freshness when trees are not
/// known.
fn release_cell(m: &Mirror, release: &str, fresh: Option<bool>) -> String {
    let trees: Vec<TreeRow> = TreeRow::of(m)
        .into_iter()
        .filter(|t| t.release == release)
        .collect();
    if trees.is_empty() {
        return match fresh {
            Some(true) => "fresh",
            Some(false) => "stale",
            None => "?",
        }
        .to_string();
    }
    trees
        .iter()
        .map(|t| {
            format!(
                "<span class=\"tree-{state}\" title=\"{detail}\">{tree} {state}</span>",
                state = esc(&t.state),
                detail = esc(&t.detail),
                tree = esc(&t.tree)
            )
        })
        .collect::<Vec<_>>()
        .join("<br>")
}

fn class(m: &Mirror) -> &'static str {
    match (m.status.eligible, m.status.health) {
        (true, _) => "up",
        (false, Health::Unknown) => "unknown",
        _ => "down",
    }
}

impl View<'_> {
    fn hour_total(&self) -> u64 {
        self.last_hour.values().sum()
    }

    fn share(&self, name: &Arc<str>) -> (u64, f64) {
        let n = self
            .last_hour
            .get(&Some(name.clone()))
            .copied()
            .unwrap_or(0);
        let total = self.hour_total();
        (
            n,
            if total > 0 {
                n as f64 / total as f64
            } else {
                0.0
            },
        )
    }

    fn fresh(&self, name: &str) -> Vec<(String, Option<bool>)> {
        let seen = self.board.mirrors.get(name);
        self.routing
            .policy
            .releases
            .iter()
            .map(|r| {
                let f = seen.and_then(|s| s.fresh.iter().find(|(rel, _)| rel == r)?.1);
                (r.clone(), f)
            })
            .collect()
    }

    fn latency_ms(&self, m: &Mirror) -> Option<f64> {
        let seen = self.board.mirrors.get(&m.name).and_then(|s| s.latency);
        seen.or(m.status.latency)
            .map(|l| (l.as_secs_f64() * 10_000.0).round() / 10.0)
    }

    fn json(&self) -> Value {
        let r = self.routing;
        let mirrors: Vec<Value> = r
            .table
            .mirrors()
            .iter()
            .map(|m| {
                let (hour, share) = self.share(&m.name);
                json!({
                    "name": &*m.name,
                    "url": &*m.base,
                    "lat": m.coord.lat,
                    "lon": m.coord.lon,
                    "weight": m.weight,
                    "countries": m.countries.as_ref().map(|cs| cs.iter().map(|c| c.to_string()).collect::<Vec<_>>()),
                    "ipv6": m.ipv6,
                    "https": m.https,
                    "eligible": m.status.eligible,
                    "health": m.status.health.to_string(),
                    "state": state(m),
                    "reason": &*m.status.reason,
                    "summary": m.status.summary(),
                    "since": rfc3339(m.status.since),
                    "latency_ms": self.latency_ms(m),
                    "releases": self.fresh(&m.name).into_iter()
                        .map(|(rel, f)| (rel, json!(f))).collect::<serde_json::Map<_, _>>(),
                    "trees": TreeRow::of(m).iter().map(TreeRow::json).collect::<Vec<_>>(),
                    "redirects_last_hour": hour,
                    "share_last_hour": share,
                })
            })
            .collect();
        let c = &self.coverage;
        json!({
            "generated": rfc3339(self.at),
            "origin": &*r.policy.origin,
            "origin_index": {
                "reachable": self.board.origin.reachable,
                "fetched": self.board.origin.fetched.map(rfc3339),
                "changed": self.board.origin.changed.map(rfc3339),
                "error": self.board.origin.error.as_deref(),
            },
            "releases": r.policy.releases,
            "eligible": r.table.mirrors().iter().filter(|m| m.status.eligible).count(),
            "reload": {
                "applied": r.reload.applied,
                "failed": r.reload.failed,
                "last_error": r.reload.last_error.as_ref().map(|e| json!({
                    "at": rfc3339(e.at),
                    "message": e.message,
                })),
            },
            "mirrors": mirrors,
            "redirects_last_hour": {
                "mirrors": self.hour_total() - self.last_hour.get(&None).copied().unwrap_or(0),
                "origin_no_candidate": self.last_hour.get(&None).copied().unwrap_or(0),
            },
            "coverage": {
                "window_hours": coverage::WINDOW.as_secs() / 3600,
                "cell_degrees": CELL_DEG,
                "requests": c.requests,
                "unplaced": c.unplaced,
                "cells": c.cells.iter().map(|s| {
                    let at = cell_centre(s.cell);
                    json!({"lat": at.lat, "lon": at.lon, "requests": s.requests, "mean_km": s.mean_km.map(f64::round)})
                }).collect::<Vec<_>>(),
                "suggestions": c.suggestions.iter().map(|s| json!({
                    "lat": s.at.lat,
                    "lon": s.at.lon,
                    "near": s.near,
                    "requests": s.requests,
                    "mean_km_now": s.mean_km_now.round(),
                    "km_saved": s.km_saved.round(),
                })).collect::<Vec<_>>(),
            },
        })
    }

    fn html(&self) -> String {
        let r = self.routing;
        let eligible = r
            .table
            .mirrors()
            .iter()
            .filter(|m| m.status.eligible)
            .count();
        let mut out = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>distri mirrors</title><style>{PAGE_CSS}\
.cell{{fill:#d9480f}}.land{{fill:#dfe5dc;stroke:#aab5a6;stroke-width:.4}}\
circle.up{{fill:#1e8e3e}}circle.down{{fill:#d93025}}circle.unknown{{fill:#9aa0a6}}\
circle{{stroke:#fff;stroke-width:1.5}}.want{{fill:none;stroke:#1a73e8;stroke-width:2.5;stroke-dasharray:4 3}}\
.warn{{background:#fce8e6;padding:.5rem .8rem;border-radius:4px}}</style></head><body>\
<h1>distri mirrors</h1><p>{eligible} of {total} mirrors eligible for the current releases \
({releases}); otherwise clients go to the origin, <a href=\"{origin}\">{origin}</a>. \
Updated {at}. Also as <a href=\"/mirrors.json\">JSON</a>. \
Add <code>?mirrorlist</code> to any package URL to see where it would go, and why.</p>\n",
            total = r.table.mirrors().len(),
            releases = esc(&r.policy.releases.join(", ")),
            origin = esc(&r.policy.origin),
            at = rfc3339(self.at),
        );
        if let Some(e) = &self.board.origin.error {
            let _ = writeln!(
                out,
                "<p class=\"warn\" id=\"origin-error\">The origin's index cannot be fetched: {}. \
Mirrors are checked against the last index fetched{}.</p>",
                esc(e),
                self.board
                    .origin
                    .fetched
                    .map_or(String::new(), |t| format!(", at {}", rfc3339(t)))
            );
        }
        if let Some(e) = &r.reload.last_error {
            let _ = writeln!(
                out,
                "<p class=\"warn\" id=\"reload-error\">The last reload was refused at {}: {}. \
The service runs on the previous configuration.</p>",
                rfc3339(e.at),
                esc(&e.message)
            );
        }
        out.push_str(&self.map_svg());
        out.push_str(&self.mirror_table());
        out.push_str(&self.suggestions());
        let geo = r
            .geo
            .attribution()
            .map_or(String::new(), |a| format!(" Client locations: {a}."));
        let _ = writeln!(
            out,
            "<p><small>Map: Natural Earth 1:110m countries (public domain), via world-atlas (ISC), \
Equal Earth projection. Shaded cells: where requests came from over the last 24 hours \
(no addresses are kept).{geo}</small></p></body></html>"
        );
        out
    }

    fn map_svg(&self) -> String {
        let mut svg = format!(
            "<svg id=\"map\" viewBox=\"0 0 {w:.0} {h:.0}\" role=\"img\" aria-label=\"World map of mirrors and requests\" xmlns=\"http://www.w3.org/2000/svg\">\
<path class=\"land\" d=\"{land}\"/>\n",
            w = map::WIDTH,
            h = map::HEIGHT,
            land = map::outlines(),
        );
        let max = self
            .coverage
            .cells
            .iter()
            .map(|c| c.requests)
            .max()
            .unwrap_or(1) as f64;
        for c in &self.coverage.cells {
            let (row, col) = (c.cell / COLS, c.cell % COLS);
            let lat = 90.0 - row as f64 * CELL_DEG;
            let lon = -180.0 + col as f64 * CELL_DEG;
            let opacity = 0.15 + 0.7 * ((c.requests as f64).ln_1p() / max.ln_1p());
            let km = c
                .mean_km
                .map_or("unknown".to_string(), |k| format!("{k:.0} km"));
            let _ = writeln!(
                svg,
                "<path class=\"cell\" fill-opacity=\"{opacity:.2}\" d=\"{}\"><title>{} requests from around {:.1}, {:.1}; mean distance {km}</title></path>",
                map::cell_path(lat, lon, CELL_DEG),
                c.requests,
                lat - CELL_DEG / 2.0,
                lon + CELL_DEG / 2.0,
            );
        }
        for s in &self.coverage.suggestions {
            let (x, y) = map::project_coord(s.at);
            let _ = writeln!(
                svg,
                "<circle class=\"want\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"14\"><title>A mirror near here ({}) would save {:.0} client-km</title></circle>",
                s.near.as_deref().unwrap_or("?"),
                s.km_saved
            );
        }
        for m in self.routing.table.mirrors() {
            let (x, y) = map::project_coord(m.coord);
            let _ = writeln!(
                svg,
                "<circle class=\"mirror {}\" data-mirror=\"{}\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"6\"><title>{}: {} ({})</title></circle>",
                class(m),
                esc(&m.name),
                esc(&m.name),
                state(m),
                esc(&m.status.reason)
            );
        }
        svg.push_str("</svg>\n");
        svg
    }

    fn mirror_table(&self) -> String {
        let releases = &self.routing.policy.releases;
        let mut t = String::from(
            "<h2>Mirrors</h2><table><thead><tr><th>mirror</th><th>state</th><th>since</th>",
        );
        for r in releases {
            let _ = write!(t, "<th>{}</th>", esc(r));
        }
        t.push_str("<th>latency</th><th>weight</th><th>countries</th><th>last hour</th></tr></thead><tbody>\n");
        for m in self.routing.table.mirrors() {
            let (n, share) = self.share(&m.name);
            let _ = write!(
                t,
                "<tr><td><a href=\"{url}\">{name}</a></td><td class=\"{class}\">{state}<br><small>{reason}</small></td><td>{since}</td>",
                url = esc(&m.base),
                name = esc(&m.name),
                class = class(m),
                state = state(m),
                reason = esc(&m.status.summary()),
                since = rfc3339(m.status.since),
            );
            for (release, f) in self.fresh(&m.name) {
                let _ = write!(t, "<td>{}</td>", release_cell(m, &release, f));
            }
            let countries = m.countries.as_ref().map_or("all".to_string(), |cs| {
                cs.iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            });
            let _ = writeln!(
                t,
                "<td class=\"n\">{}</td><td class=\"n\">{}</td><td>{countries}</td><td class=\"n\">{n} ({:.0}%)</td></tr>",
                self.latency_ms(m)
                    .map_or("-".to_string(), |l| format!("{l} ms")),
                m.weight,
                share * 100.0
            );
        }
        t.push_str("</tbody></table>\n");
        t
    }

    fn suggestions(&self) -> String {
        let c = &self.coverage;
        let mut s = format!(
            "<h2>Where a new mirror would help most</h2><p>{} requests over the last 24 hours, \
{} of them from clients without a location.</p>",
            c.requests, c.unplaced
        );
        if c.suggestions.is_empty() {
            s.push_str("<p>No region stands out yet.</p>\n");
            return s;
        }
        s.push_str("<table id=\"wanted\"><thead><tr><th>around</th><th>near</th><th>requests helped</th><th>they travel now</th><th>client-km saved</th></tr></thead><tbody>\n");
        for g in &c.suggestions {
            let _ = writeln!(
                s,
                "<tr><td>{:.1}, {:.1}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{:.0} km</td><td class=\"n\">{:.0}</td></tr>",
                g.at.lat,
                g.at.lon,
                g.near.as_deref().unwrap_or("?"),
                g.requests,
                g.mean_km_now,
                g.km_saved
            );
        }
        s.push_str("</tbody></table>\n");
        s
    }
}
