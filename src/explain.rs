//! Why a client goes where it goes: one view of a decision, built from the
//! same selection the redirect uses, and shown as text (`locate`), as HTML
//! and as JSON (`?mirrorlist`). Not for the request path: it allocates.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde_json::{Value, json};

use crate::client::{Derivation, Sender};
use crate::geoip::{GeoDb, Location};
use crate::select::{self, Client, Exclusion, Verdict, band_limit};
use crate::table::{Mirror, Table};

/// A decision, explained.
#[derive(Clone, Debug)]
pub struct Explanation {
    pub ip: IpAddr,
    /// How the address was found; `None` when it was given (`&ip=`, `locate`).
    pub derivation: Option<Derivation>,
    pub https_only: bool,
    pub location: Location,
    /// The nearest candidate's distance and the band's edge.
    pub band: Option<(f64, f64)>,
    /// Every mirror, nearest first.
    pub mirrors: Vec<Row>,
    /// The chosen mirror's name; `None`: the origin.
    pub chosen: Option<String>,
    /// Where the redirect goes: the chosen mirror's base or the origin.
    pub base: String,
    /// The path is not in a current release: it goes to the origin.
    pub outside_releases: bool,
    /// Which mirrors may serve the file asked for, and why.
    pub file: Option<String>,
    /// The GeoIP database's credit, as HTML, when its licence asks for one.
    pub attribution: Option<&'static str>,
}

/// One mirror in an explanation.
#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub url: String,
    pub distance_km: Option<f64>,
    pub weight: f64,
    pub verdict: Verdict,
    pub health: String,
    pub reason: String,
    /// Each tree's state on this mirror, as probed.
    pub trees: Vec<TreeRow>,
}

/// One tree of a mirror, as probed.
#[derive(Clone, Debug)]
pub struct TreeRow {
    pub release: String,
    pub tree: String,
    pub state: String,
    pub detail: String,
    /// The short id of the index verified complete, if any.
    pub index: Option<String>,
}

impl TreeRow {
    /// Each tree of `m` as its status records it.
    pub fn of(m: &Mirror) -> Vec<TreeRow> {
        let Some(trees) = &m.status.trees else {
            return Vec::new();
        };
        trees
            .iter()
            .map(|t| TreeRow {
                release: t.release.to_string(),
                tree: t.tree.to_string(),
                state: t.state.to_string(),
                detail: t.detail.to_string(),
                index: t.verified.as_ref().map(|l| l.short_id()),
            })
            .collect()
    }

    fn short(&self) -> String {
        format!("{}/{} {}", self.release, self.tree, self.state)
    }

    pub fn json(&self) -> Value {
        json!({
            "release": self.release,
            "tree": self.tree,
            "state": self.state,
            "detail": self.detail,
            "verified_index": self.index,
        })
    }
}

/// Explains where `sender` goes with `table` and `geo` for `path` (a
/// canonical path of a current release, or `None` for any file), `origin`
/// standing in when no mirror qualifies.
pub fn explain(
    table: &Table,
    geo: &GeoDb,
    origin: &str,
    sender: Sender,
    derivation: Option<Derivation>,
    path: Option<&str>,
) -> Explanation {
    let location = geo.lookup(sender.ip);
    let class = path.map(|p| table.catalog().classify(p));
    let client = Client::new(sender.ip, &location)
        .https_only(sender.https)
        .asking_for(class.map_or(table.catalog().any_file(), |(set, _)| set));
    let considered = select::explain(table, &client);
    let mirrors: Vec<Row> = considered
        .iter()
        .map(|c| {
            let m = table.get(c.id);
            Row {
                name: m.name.to_string(),
                url: m.base.to_string(),
                distance_km: c.distance_km,
                weight: m.weight,
                verdict: c.verdict,
                health: m.status.health.to_string(),
                reason: m.status.summary(),
                trees: TreeRow::of(m),
            }
        })
        .collect();
    let chosen = mirrors.iter().find(|r| r.verdict == Verdict::Chosen);
    let nearest = mirrors
        .iter()
        .filter(|r| !matches!(r.verdict, Verdict::Excluded(_)))
        .filter_map(|r| r.distance_km)
        .min_by(f64::total_cmp);
    Explanation {
        ip: sender.ip,
        derivation,
        https_only: sender.https,
        band: nearest.map(|n| (n, band_limit(n, table.band()))),
        chosen: chosen.map(|r| r.name.clone()),
        base: chosen.map_or_else(|| origin.to_string(), |r| r.url.clone()),
        location,
        mirrors,
        outside_releases: false,
        attribution: geo.attribution(),
        file: Some(class.map_or_else(
            || "any file: mirrors fresh for every tree".to_string(),
            |(_, c)| c.to_string(),
        )),
    }
}

/// Why a mirror was excluded, in a word, for JSON.
fn exclusion_code(e: Exclusion) -> &'static str {
    match e {
        Exclusion::NotEligible => "not_eligible",
        Exclusion::Country => "country",
        Exclusion::Ipv4Only => "address_family",
        Exclusion::NotHttps => "not_https",
        Exclusion::LacksFile => "lacks_file",
    }
}

fn km(d: Option<f64>) -> String {
    d.map_or("?".to_string(), |d| format!("{d:.0} km"))
}

impl Explanation {
    /// For a path outside the current releases: every client goes to the
    /// origin, whatever the mirrors.
    pub fn not_release(&mut self, origin: &str) {
        self.outside_releases = true;
        self.file = None;
        self.chosen = None;
        self.base = origin.to_string();
        for r in &mut self.mirrors {
            if r.verdict == Verdict::Chosen {
                r.verdict = Verdict::InBand;
            }
        }
    }

    fn country(&self) -> String {
        self.location
            .country
            .map_or("unknown".to_string(), |c| c.to_string())
    }

    fn place(&self) -> String {
        self.location.coord.map_or("unknown".to_string(), |c| {
            format!("{:.2},{:.2}", c.lat, c.lon)
        })
    }

    fn derived(&self) -> String {
        match &self.derivation {
            None => "given (ip=)".to_string(),
            Some(d) => {
                let proxies: Vec<String> = d.proxies.iter().map(|p| p.to_string()).collect();
                if proxies.is_empty() {
                    d.via.describe().to_string()
                } else {
                    format!("{}: {}", d.via.describe(), proxies.join(", "))
                }
            }
        }
    }

    /// The URL the redirect gives for `path` (canonical, no leading `/`).
    pub fn redirect(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The text `locate` prints.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{}: country {}, at {} ({})\n",
            self.ip,
            self.country(),
            self.place(),
            self.location.source
        );
        if let Some(f) = &self.file {
            let _ = writeln!(out, "  the file: {f}");
        }
        if self.mirrors.is_empty() {
            let _ = writeln!(out, "  no mirrors configured: origin {}", self.base);
        }
        for r in &self.mirrors {
            let _ = writeln!(
                out,
                "  {:<16} {:>9}  {}  [{}: {}]",
                r.name,
                km(r.distance_km),
                r.verdict,
                r.health,
                r.reason
            );
            if r.trees.iter().any(|t| t.state != "fresh") {
                let trees: Vec<String> = r.trees.iter().map(TreeRow::short).collect();
                let _ = writeln!(out, "  {:<16} trees: {}", "", trees.join(", "));
            }
        }
        if self.chosen.is_none() && !self.mirrors.is_empty() {
            let _ = writeln!(out, "  -> origin {}", self.base);
        }
        out
    }

    /// The JSON `?mirrorlist` answers with `Accept: application/json`.
    pub fn json(&self, path: &str) -> Value {
        let (candidates, excluded): (Vec<&Row>, Vec<&Row>) = self
            .mirrors
            .iter()
            .partition(|r| !matches!(r.verdict, Verdict::Excluded(_)));
        json!({
            "client": {
                "ip": self.ip.to_string(),
                "derived_from": self.derived(),
                "peer": self.derivation.as_ref().map(|d| d.peer.to_string()),
                "trusted_proxies": self.derivation.as_ref()
                    .map(|d| d.proxies.iter().map(|p| p.to_string()).collect::<Vec<_>>()),
                "https_only": self.https_only,
            },
            "location": {
                "country": self.location.country.map(|c| c.to_string()),
                "lat": self.location.coord.map(|c| c.lat),
                "lon": self.location.coord.map(|c| c.lon),
                "source": self.location.source.to_string(),
            },
            "band": self.band.map(|(nearest, limit)| json!({"nearest_km": nearest, "limit_km": limit})),
            "candidates": candidates.iter().map(|r| json!({
                "name": r.name,
                "url": r.url,
                "distance_km": r.distance_km,
                "weight": r.weight,
                "chosen": r.verdict == Verdict::Chosen,
                "in_band": r.verdict != Verdict::OutsideBand,
                "trees": r.trees.iter().map(TreeRow::json).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "excluded": excluded.iter().map(|r| json!({
                "name": r.name,
                "distance_km": r.distance_km,
                "reason": match r.verdict {
                    Verdict::Excluded(e) => exclusion_code(e),
                    _ => "",
                },
                "detail": match r.verdict {
                    Verdict::Excluded(Exclusion::NotEligible) => format!("{}: {}", r.health, r.reason),
                    Verdict::Excluded(Exclusion::LacksFile) => format!("{}: {}", r.verdict, r.reason),
                    v => v.to_string(),
                },
                "trees": r.trees.iter().map(TreeRow::json).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "file": self.file,
            "chosen": self.chosen,
            "outside_current_releases": self.outside_releases,
            "redirect": self.redirect(path),
        })
    }

    /// The HTML page `?mirrorlist` answers with.
    pub fn html(&self, path: &str) -> String {
        let mut rows = String::new();
        for r in &self.mirrors {
            let class = match r.verdict {
                Verdict::Chosen => "chosen",
                Verdict::Excluded(_) => "excluded",
                _ => "candidate",
            };
            let why = match r.verdict {
                Verdict::Excluded(Exclusion::NotEligible) => {
                    format!("excluded: not eligible ({}: {})", r.health, r.reason)
                }
                Verdict::Excluded(Exclusion::LacksFile) => format!("{} ({})", r.verdict, r.reason),
                v => v.to_string(),
            };
            let _ = writeln!(
                rows,
                "<tr class=\"{class}\"><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                esc(&r.name),
                km(r.distance_km),
                r.weight,
                esc(&why)
            );
        }
        let band = self
            .band
            .map_or("every candidate (no location)".to_string(), |(n, l)| {
                format!("nearest {n:.0} km, band up to {l:.0} km")
            });
        let target = self.redirect(path);
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Mirror choice for /{path}</title><style>{css}</style></head><body>\
<h1>Mirror choice for <code>/{path}</code></h1>\
<dl><dt>Client</dt><dd>{ip} ({derived}){https}</dd>\
<dt>Location</dt><dd>country {country}, at {place} ({source})</dd>\
<dt>The file</dt><dd>{file}</dd>\
<dt>Band</dt><dd>{band}</dd>\
<dt>Redirect</dt><dd><a href=\"{target_attr}\">{target_text}</a>{outside}</dd></dl>\
<table><thead><tr><th>mirror</th><th>distance</th><th>weight</th><th>verdict</th></tr></thead>\
<tbody>\n{rows}</tbody></table>\
<p><a href=\"/mirrors\">All mirrors and coverage</a>{credit}</p></body></html>\n",
            css = PAGE_CSS,
            path = esc(path),
            ip = self.ip,
            derived = esc(&self.derived()),
            https = if self.https_only {
                "; came over https: https mirrors only"
            } else {
                ""
            },
            country = self.country(),
            file = esc(self.file.as_deref().unwrap_or("any mirror")),
            credit = self
                .attribution
                .map_or(String::new(), |a| format!(". Location: {a}")),
            place = self.place(),
            source = self.location.source,
            target_attr = esc(&target),
            target_text = esc(&target),
            outside = if self.outside_releases {
                " (not in a current release: always the origin)"
            } else {
                ""
            },
        )
    }
}

/// The style both HTML pages share: readable on a phone, no external assets.
pub const PAGE_CSS: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:1rem auto;max-width:64rem;padding:0 .8rem;color:#222}\
table{border-collapse:collapse;width:100%;margin:.8rem 0;display:block;overflow-x:auto}\
th,td{text-align:left;padding:.25rem .5rem;border-bottom:1px solid #ddd;vertical-align:top}\
td.n{text-align:right;white-space:nowrap}tr.chosen td{font-weight:600;background:#e6f4ea}\
tr.excluded td{color:#777}dt{font-weight:600}dd{margin:0 0 .4rem 0}code{font-size:.95em}\
.up{color:#137333}.down{color:#b3261e}.unknown{color:#777}svg{width:100%;height:auto;background:#eef3f7}";

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
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
