//! The world map of the status page: Natural Earth's 1:110m country
//! outlines (TopoJSON from `world-atlas`, shipped beside this file with its
//! licence) in the Equal Earth projection, as SVG. The outlines are decoded
//! and projected once per process; markers and cells per render.

use std::fmt::Write as _;
use std::sync::OnceLock;

use serde::Deserialize;

use crate::geo::Coord;

const TOPOJSON: &str = include_str!("countries-110m.json");

/// The SVG's width; its height follows from the projection.
pub const WIDTH: f64 = 1000.0;
/// Equal Earth's extent: |x| and |y| at most these (unit sphere).
const X_MAX: f64 = 2.706_630_0;
const Y_MAX: f64 = 1.317_362_8;
const SCALE: f64 = WIDTH / (2.0 * X_MAX);
pub const HEIGHT: f64 = 2.0 * Y_MAX * SCALE;

/// Equal Earth (Šavrič, Patterson, Jenny 2018): equal-area, so shaded
/// cells compare fairly; into SVG units, origin at the top left.
pub fn project(lat: f64, lon: f64) -> (f64, f64) {
    const A1: f64 = 1.340_264;
    const A2: f64 = -0.081_106;
    const A3: f64 = 0.000_893;
    const A4: f64 = 0.003_796;
    let m = 3f64.sqrt() / 2.0;
    let theta = (m * lat.to_radians().sin()).asin();
    let t2 = theta * theta;
    let t6 = t2 * t2 * t2;
    let x = 2.0 * 3f64.sqrt() * lon.to_radians() * theta.cos()
        / (3.0 * (9.0 * A4 * t6 * t2 + 7.0 * A3 * t6 + 3.0 * A2 * t2 + A1));
    let y = theta * (A4 * t6 * t2 + A3 * t6 + A2 * t2 + A1);
    ((x + X_MAX) * SCALE, (Y_MAX - y) * SCALE)
}

pub fn project_coord(c: Coord) -> (f64, f64) {
    project(c.lat, c.lon)
}

#[derive(Deserialize)]
struct Topology {
    arcs: Vec<Vec<[i64; 2]>>,
    transform: Transform,
    objects: Objects,
}

#[derive(Deserialize)]
struct Transform {
    scale: [f64; 2],
    translate: [f64; 2],
}

#[derive(Deserialize)]
struct Objects {
    countries: Collection,
}

#[derive(Deserialize)]
struct Collection {
    geometries: Vec<Geometry>,
}

#[derive(Deserialize)]
#[serde(tag = "type")]
enum Geometry {
    Polygon {
        arcs: Vec<Vec<i64>>,
    },
    MultiPolygon {
        arcs: Vec<Vec<Vec<i64>>>,
    },
    #[serde(other)]
    Other,
}

/// The country outlines as one SVG path's `d`, made once.
pub fn outlines() -> &'static str {
    static D: OnceLock<String> = OnceLock::new();
    D.get_or_init(|| decode(TOPOJSON).unwrap_or_default())
}

/// TopoJSON to path data: arcs are delta-encoded, quantised points; a ring
/// lists arcs by index, `!i` meaning arc `i` reversed.
fn decode(text: &str) -> Option<String> {
    let topo: Topology = serde_json::from_str(text).ok()?;
    let t = &topo.transform;
    let arcs: Vec<Vec<(f64, f64)>> = topo
        .arcs
        .iter()
        .map(|arc| {
            let (mut x, mut y) = (0i64, 0i64);
            arc.iter()
                .map(|[dx, dy]| {
                    x += dx;
                    y += dy;
                    let lon = x as f64 * t.scale[0] + t.translate[0];
                    let lat = y as f64 * t.scale[1] + t.translate[1];
                    project(lat, lon)
                })
                .collect()
        })
        .collect();
    let mut d = String::new();
    let mut ring = |indices: &[i64]| {
        let mut points: Vec<(f64, f64)> = Vec::new();
        for &i in indices {
            let arc = if i >= 0 {
                arcs.get(i as usize)?.clone()
            } else {
                let mut a = arcs.get(!i as usize)?.clone();
                a.reverse();
                a
            };
            // Each arc starts where the previous one ended.
            let skip = usize::from(!points.is_empty());
            points.extend(arc.into_iter().skip(skip));
        }
        path(&mut d, &points);
        Some(())
    };
    for g in &topo.objects.countries.geometries {
        match g {
            Geometry::Polygon { arcs } => arcs.iter().try_for_each(|r| ring(r))?,
            Geometry::MultiPolygon { arcs } => {
                arcs.iter().flatten().try_for_each(|r| ring(r))?;
            }
            Geometry::Other => {}
        }
    }
    Some(d)
}

/// Appends one closed ring, in whole SVG units (a third of a degree:
/// finer than the 1:110m outlines), without repeats.
fn path(d: &mut String, points: &[(f64, f64)]) {
    let mut last = None;
    for &(x, y) in points {
        let p = (x.round() as i64, y.round() as i64);
        if last == Some(p) {
            continue;
        }
        // Relative steps after the first point: short numbers, small page.
        // A step across the whole map is a ring crossing the antimeridian
        // (Fiji, Chukotka): move, do not draw a line over the world.
        let _ = match last {
            Some(l) if (p.0 - l.0).abs() < (WIDTH / 2.0) as i64 => {
                write!(d, "l{} {}", p.0 - l.0, p.1 - l.1)
            }
            _ => write!(d, "M{} {}", p.0, p.1),
        };
        last = Some(p);
    }
    if last.is_some() {
        d.push('Z');
    }
}

/// A cell of `deg` degrees with its north-west corner at (`lat`, `lon`),
/// as a closed path.
pub fn cell_path(lat: f64, lon: f64, deg: f64) -> String {
    let corners = [
        (lat, lon),
        (lat, lon + deg),
        (lat - deg, lon + deg),
        (lat - deg, lon),
    ];
    let mut d = String::new();
    let pts: Vec<(f64, f64)> = corners.iter().map(|&(a, o)| project(a, o)).collect();
    path(&mut d, &pts);
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_fills_the_frame() {
        let (x, y) = project(0.0, 0.0);
        assert!((x - WIDTH / 2.0).abs() < 1e-9 && (y - HEIGHT / 2.0).abs() < 1e-9);
        let (x, _) = project(0.0, 180.0);
        assert!((x - WIDTH).abs() < 0.01, "{x}");
        let (_, y) = project(90.0, 0.0);
        assert!(y.abs() < 0.01, "{y}");
        // West is left, north is up.
        assert!(project(0.0, -74.0).0 < project(0.0, 8.0).0);
        assert!(project(60.0, 0.0).1 < project(-30.0, 0.0).1);
    }

    #[test]
    fn outlines_decode_every_country() {
        let d = outlines();
        // 177 countries, some with islands: hundreds of rings.
        assert!(d.matches('Z').count() > 250, "{}", d.matches('Z').count());
        assert!(d.len() < 60_000, "{} bytes", d.len());
        assert!(!d.contains("NaN"));
    }
}
