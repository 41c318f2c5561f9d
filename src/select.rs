//! Selection: which mirror serves a client. A pure function of the table,
//! the client's place and network, and the band settings: no I/O, no clock,
//! no global randomness, no allocation.
//!
//! 1. Candidates are eligible mirrors that serve the client's country, and
//!    only `https://` ones for a client that came over TLS (never a
//!    downgrade). IPv6 clients look at IPv6-capable mirrors first, and at all only when
//!    none of those is a candidate.
//! 2. With a known location, the band is every candidate whose distance is at
//!    most `max(nearest * band_ratio, nearest + band_km)`; without one, every
//!    candidate.
//! 3. Within the band, weighted rendezvous hashing on the client's network
//!    (IPv4 /24, IPv6 /48) picks one: the same network gets the same mirror
//!    while the table does not change, and networks spread in proportion to
//!    weight.

use std::net::IpAddr;

use crate::catalog::{ALL, SetId};
use crate::config::Selection;
use crate::geo::{Coord, Country, dot_from_km, km_from_dot};
use crate::geoip::Location;
use crate::index::Point;
use crate::table::{Mirror, MirrorId, Table, mix};

/// What selection knows of a client.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Client {
    pub coord: Option<Coord>,
    pub country: Option<Country>,
    pub ipv6: bool,
    /// The client's network (the unit of stickiness), hashed.
    pub network: u64,
    /// It came over TLS (itself, or to a trusted proxy): `https://` only.
    pub https_only: bool,
    /// The candidate set of the file it asks for ([`crate::catalog`]).
    pub set: SetId,
}

impl Client {
    pub fn new(ip: IpAddr, location: &Location) -> Client {
        let ip = ip.to_canonical();
        Client {
            coord: location.coord,
            country: location.country,
            ipv6: ip.is_ipv6(),
            network: mix(network_key(ip)),
            https_only: false,
            set: ALL,
        }
    }

    /// The same client, asking for a file of candidate set `set`.
    pub fn asking_for(self, set: SetId) -> Client {
        Client { set, ..self }
    }

    /// The same client, sent only to `https://` mirrors when `yes`.
    pub fn https_only(self, yes: bool) -> Client {
        Client {
            https_only: yes,
            ..self
        }
    }
}

/// The /24 or /48 an address is in, tagged by family.
pub fn network_key(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(a) => (4 << 60) | (u32::from(a) >> 8) as u64,
        IpAddr::V6(a) => (6 << 60) | (u128::from(a) >> 80) as u64,
    }
}

/// Why a mirror is not a candidate for a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exclusion {
    NotEligible,
    Country,
    /// An IPv4-only mirror, passed over because IPv6-capable ones qualify.
    Ipv4Only,
    /// A plain `http://` mirror, for a client that came over TLS.
    NotHttps,
    /// Not verified to hold the file asked for (not fresh for its tree, or
    /// its verified index does not list it).
    LacksFile,
}

fn admits(m: &Mirror, client: &Client, need_v6: bool) -> Result<(), Exclusion> {
    if !m.status.eligible {
        Err(Exclusion::NotEligible)
    } else if !m.serves_country(client.country) {
        Err(Exclusion::Country)
    } else if client.https_only && !m.https {
        Err(Exclusion::NotHttps)
    } else if need_v6 && !m.ipv6 {
        Err(Exclusion::Ipv4Only)
    } else {
        Ok(())
    }
}

/// The mirror for this client, or `None` to send it to the origin.
pub fn select(table: &Table, client: &Client) -> Option<MirrorId> {
    if client.ipv6 {
        if let Some(id) = pick(table, client, true) {
            return Some(id);
        }
    }
    pick(table, client, false)
}

/// A client with no coordinates: the weighted, sticky choice among all
/// candidates. Its network is folded into one of `UNPLACED_SLOTS` keys, for
/// which the index has the answers precomputed unless the client's country
/// has mirrors of its own.
fn pick_unplaced(table: &Table, client: &Client, need_v6: bool) -> Option<MirrorId> {
    let slot = unplaced_slot(client.network);
    let view = table.view(client.set, client.https_only);
    let index = &view.index;
    if index.restricted(client.country).is_empty() {
        return index.unplaced(slot, need_v6);
    }
    let key = slot_key(slot);
    let all = view
        .eligible
        .iter()
        .copied()
        .filter(|&id| admits(table.get(id), client, need_v6).is_ok());
    rendezvous(
        all.map(|id| (id, table.get(id).inv_weight, table.get(id).seed)),
        key,
    )
}

/// How many keys clients without coordinates are spread over.
pub const UNPLACED_SLOTS: usize = 4096;

/// The slot of a hashed network: its top bits.
pub fn unplaced_slot(network: u64) -> usize {
    (network >> (64 - UNPLACED_SLOTS.trailing_zeros())) as usize
}

/// The rendezvous key standing for every network of a slot.
pub fn slot_key(slot: usize) -> u64 {
    mix(slot as u64 ^ 0x9e37_79b9_7f4a_7c15)
}

/// The winner of weighted rendezvous hashing among (id, 1 / weight, seed).
pub fn rendezvous(
    candidates: impl Iterator<Item = (MirrorId, f64, u64)>,
    key: u64,
) -> Option<MirrorId> {
    candidates
        .map(|(id, inv_weight, seed)| (id, arrival(inv_weight, seed, key)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(id, _)| id)
}

/// Room for rounding when a dot product is compared with the band's edge.
const EDGE: f64 = 1e-12;

fn pick(table: &Table, client: &Client, need_v6: bool) -> Option<MirrorId> {
    let Some(at) = client.coord else {
        return pick_unplaced(table, client, need_v6);
    };
    let index = &table.view(client.set, client.https_only).index;
    let cell = index.grid(need_v6).cell(at);
    // The v6 grid holds IPv6 mirrors only; per-country lists hold both.
    let restricted = || {
        index
            .restricted(client.country)
            .iter()
            .map(|&p| index.point(p))
            .filter(move |m| m.ipv6 || !need_v6)
    };
    let p = at.unit();

    // The nearest. Cell slots come in decreasing order of the largest dot
    // product they can have, so the scan stops where none can beat the best.
    let mut best = restricted()
        .map(|m| p.dot(m.at))
        .fold(f64::NEG_INFINITY, f64::max);
    for s in cell {
        if (s.max_dot as f64) < best {
            break;
        }
        best = best.max(p.dot(index.point(s.point).at));
    }
    if best == f64::NEG_INFINITY {
        return None;
    }

    // The band, and the first to arrive in it.
    let edge = dot_from_km(band_limit(km_from_dot(best), table.band())) - EDGE;
    let mut chosen: Option<(u32, f64)> = None;
    let mut consider = |m: &Point| {
        if p.dot(m.at) < edge {
            return;
        }
        let u = uniform(m.seed, client.network);
        // -ln(u) >= 1 - u: most band members are ruled out without a log.
        if chosen.is_some_and(|(_, b)| (1.0 - u) * m.inv_weight >= b) {
            return;
        }
        let a = -u.ln() * m.inv_weight;
        if chosen.is_none_or(|(_, b)| a < b) {
            chosen = Some((m.id, a));
        }
    };
    restricted().for_each(&mut consider);
    cell.iter()
        .take_while(|s| s.max_dot as f64 >= edge)
        .for_each(|s| consider(index.point(s.point)));
    chosen.map(|(id, _)| id as MirrorId)
}

/// The farthest distance still in the band of a nearest candidate.
pub fn band_limit(nearest_km: f64, band: &Selection) -> f64 {
    (nearest_km * band.band_ratio).max(nearest_km + band.band_km)
}

/// Weighted rendezvous hashing as a race: each mirror "arrives" after an
/// exponential time `-ln(u) / weight` with `u` uniform in (0, 1) from the
/// hash of key and mirror; the first wins, which makes each mirror win in
/// proportion to its weight.
#[inline]
fn arrival(inv_weight: f64, seed: u64, key: u64) -> f64 {
    -uniform(seed, key).ln() * inv_weight
}

/// A number in (0, 1) from the hash of a mirror's seed and a key.
#[inline]
fn uniform(seed: u64, key: u64) -> f64 {
    ((mix(key ^ seed) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// How selection treated one mirror, for `locate` and the operators.
#[derive(Clone, Debug, PartialEq)]
pub struct Considered {
    pub id: MirrorId,
    pub distance_km: Option<f64>,
    pub verdict: Verdict,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Chosen,
    /// In the band: other networks of this area may get it.
    InBand,
    OutsideBand,
    Excluded(Exclusion),
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Chosen => "chosen",
            Verdict::InBand => "in band (other networks nearby may get it)",
            Verdict::OutsideBand => "outside the band of the nearest",
            Verdict::Excluded(Exclusion::NotEligible) => "excluded: not eligible",
            Verdict::Excluded(Exclusion::Country) => "excluded: does not serve this country",
            Verdict::Excluded(Exclusion::Ipv4Only) => "excluded: IPv4-only, IPv6 mirrors qualify",
            Verdict::Excluded(Exclusion::NotHttps) => {
                "excluded: http only, and the client came over https"
            }
            Verdict::Excluded(Exclusion::LacksFile) => "excluded: not verified to hold this file",
        })
    }
}

/// Every mirror, nearest first, with what selection made of it. Not for the
/// request path: it allocates.
pub fn explain(table: &Table, client: &Client) -> Vec<Considered> {
    let chosen = select(table, client);
    let members = &table.view(client.set, false).eligible;
    let admits = |id: MirrorId, need_v6: bool| {
        admits(table.get(id), client, need_v6).and_then(|()| {
            if members.contains(&id) {
                Ok(())
            } else {
                Err(Exclusion::LacksFile)
            }
        })
    };
    let need_v6 = client.ipv6 && (0..table.mirrors().len()).any(|id| admits(id, true).is_ok());
    let dist = |id: MirrorId| client.coord.map(|at| at.distance_km(table.get(id).coord));
    let nearest = (0..table.mirrors().len())
        .filter(|&id| admits(id, need_v6).is_ok())
        .filter_map(dist)
        .min_by(f64::total_cmp);
    let mut out: Vec<Considered> = (0..table.mirrors().len())
        .map(|id| {
            let distance_km = dist(id);
            let verdict = match admits(id, need_v6) {
                Err(e) => Verdict::Excluded(e),
                Ok(()) if Some(id) == chosen => Verdict::Chosen,
                Ok(()) => match (distance_km, nearest) {
                    (Some(d), Some(n)) if d > band_limit(n, table.band()) => Verdict::OutsideBand,
                    _ => Verdict::InBand,
                },
            };
            Considered {
                id,
                distance_km,
                verdict,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        a.distance_km
            .unwrap_or(0.0)
            .total_cmp(&b.distance_km.unwrap_or(0.0))
            .then(a.id.cmp(&b.id))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Status;

    fn mirror(name: &str, lat: f64, lon: f64) -> crate::config::Mirror {
        crate::config::Mirror {
            name: name.into(),
            url: format!("http://{name}.example.org/"),
            coord: Coord::new(lat, lon).unwrap(),
            weight: 1.0,
            countries: None,
            ipv6: true,
        }
    }

    fn table(ms: Vec<crate::config::Mirror>) -> Table {
        Table::from_config(&ms, Status::assumed_up(), Selection::default())
    }

    fn at(lat: f64, lon: f64, net: u64) -> Client {
        Client {
            coord: Coord::new(lat, lon),
            country: None,
            ipv6: false,
            network: mix(net),
            https_only: false,
            set: crate::catalog::ALL,
        }
    }

    fn world() -> Vec<crate::config::Mirror> {
        vec![
            mirror("de-fra", 50.11, 8.68),
            mirror("us-nyc", 40.71, -74.01),
            mirror("jp-tyo", 35.68, 139.69),
            mirror("br-sao", -23.55, -46.63),
        ]
    }

    #[test]
    fn nearest_wins_when_alone_in_band() {
        let t = table(world());
        let cases = [
            ((48.85, 2.35), 0),
            ((41.88, -87.63), 1),
            ((37.57, 126.98), 2),
            ((-34.6, -58.4), 3),
        ];
        for ((lat, lon), want) in cases {
            for net in 0..50 {
                assert_eq!(select(&t, &at(lat, lon, net)), Some(want), "{lat},{lon}");
            }
        }
    }

    #[test]
    fn nothing_eligible_means_origin() {
        let t = Table::from_config(&world(), Status::unprobed(), Selection::default());
        assert_eq!(select(&t, &at(50.0, 8.0, 1)), None);
        assert_eq!(select(&Table::default(), &at(50.0, 8.0, 1)), None);
    }

    #[test]
    fn band_spreads_by_weight_and_sticks() {
        let mut ms = vec![
            mirror("a", 50.0, 8.0),
            mirror("b", 50.5, 8.5),
            mirror("far", 40.0, -74.0),
        ];
        ms[1].weight = 3.0;
        let t = table(ms);
        let mut counts = [0usize; 3];
        for net in 0..20_000u64 {
            let c = at(50.2, 8.2, net * 7919);
            let id = select(&t, &c).unwrap();
            assert_eq!(select(&t, &c), Some(id), "sticky");
            counts[id] += 1;
        }
        assert_eq!(counts[2], 0);
        let share_b = counts[1] as f64 / 20_000.0;
        assert!((0.72..0.78).contains(&share_b), "{counts:?}");
    }

    #[test]
    fn band_is_the_wider_of_ratio_and_km() {
        let b = Selection::default();
        assert_eq!(band_limit(100.0, &b), 400.0);
        assert_eq!(band_limit(2000.0, &b), 2500.0);
    }

    #[test]
    fn countries_restrict() {
        let mut ms = world();
        ms[0].countries = Some(vec![Country::parse("DE").unwrap()]);
        let t = table(ms);
        let mut c = at(48.85, 2.35, 1);
        c.country = Country::parse("FR");
        assert_eq!(select(&t, &c), Some(1), "FR is not served by de-fra");
        c.country = Country::parse("DE");
        assert_eq!(select(&t, &c), Some(0));
        c.country = None;
        assert_eq!(
            select(&t, &c),
            Some(1),
            "unknown country: unrestricted only"
        );
    }

    #[test]
    fn ipv6_clients_prefer_ipv6_mirrors() {
        let mut ms = world();
        ms[0].ipv6 = false;
        let t = table(ms);
        let mut c = at(48.85, 2.35, 1);
        assert_eq!(select(&t, &c), Some(0));
        c.ipv6 = true;
        assert_eq!(select(&t, &c), Some(1));
        let only_v4 = table(vec![{
            let mut m = mirror("v4", 50.0, 8.0);
            m.ipv6 = false;
            m
        }]);
        assert_eq!(select(&only_v4, &c), Some(0), "better than the origin");
    }

    #[test]
    fn unknown_location_spreads_over_all() {
        let t = table(world());
        let mut seen = [false; 4];
        for net in 0..1000 {
            let c = Client {
                coord: None,
                country: None,
                ipv6: false,
                network: mix(net),
                https_only: false,
                set: crate::catalog::ALL,
            };
            seen[select(&t, &c).unwrap()] = true;
        }
        assert_eq!(seen, [true; 4]);
    }

    #[test]
    fn network_keys_group_by_prefix() {
        let k = |s: &str| network_key(s.parse().unwrap());
        assert_eq!(k("192.0.2.1"), k("192.0.2.254"));
        assert_ne!(k("192.0.2.1"), k("192.0.3.1"));
        assert_eq!(k("::ffff:192.0.2.1"), k("192.0.2.7"));
        assert_eq!(k("2001:db8:1::1"), k("2001:db8:1:ffff::2"));
        assert_ne!(k("2001:db8:1::1"), k("2001:db8:2::1"));
    }

    #[test]
    fn explain_orders_and_agrees_with_select() {
        let mut ms = world();
        ms[2].countries = Some(vec![Country::parse("JP").unwrap()]);
        let t = table(ms);
        let c = at(48.85, 2.35, 5);
        let e = explain(&t, &c);
        assert_eq!(e.len(), 4);
        assert_eq!(e[0].id, 0);
        assert_eq!(e[0].verdict, Verdict::Chosen);
        assert!(e.windows(2).all(|w| w[0].distance_km <= w[1].distance_km));
        assert_eq!(
            e.iter().find(|x| x.id == 2).unwrap().verdict,
            Verdict::Excluded(Exclusion::Country)
        );
        assert_eq!(
            e.iter().find(|x| x.id == 1).unwrap().verdict,
            Verdict::OutsideBand
        );
    }

    /// The obvious algorithm: every mirror, no index, same metric.
    fn select_brute(table: &Table, client: &Client) -> Option<MirrorId> {
        let pass = |need_v6: bool| {
            let ids = || {
                (0..table.mirrors().len())
                    .filter(move |&id| admits(table.get(id), client, need_v6).is_ok())
            };
            let best = |ids: &mut dyn Iterator<Item = MirrorId>, key: u64| {
                rendezvous(
                    ids.map(|id| (id, table.get(id).inv_weight, table.get(id).seed)),
                    key,
                )
            };
            let Some(at) = client.coord else {
                return best(&mut ids(), slot_key(unplaced_slot(client.network)));
            };
            let dot = |id: MirrorId| at.unit().dot(table.get(id).coord.unit());
            let nearest = ids().map(dot).fold(f64::NEG_INFINITY, f64::max);
            let edge = dot_from_km(band_limit(km_from_dot(nearest), table.band())) - EDGE;
            best(&mut ids().filter(|&id| dot(id) >= edge), client.network)
        };
        if client.ipv6 {
            if let Some(id) = pass(true) {
                return Some(id);
            }
        }
        pass(false)
    }

    use proptest::prelude::*;

    /// Anywhere, or in a crowded 10-degree square where bands overlap.
    fn arb_place() -> impl Strategy<Value = (f64, f64)> {
        prop_oneof![
            (-90.0..=90.0f64, -180.0..=180.0f64),
            (45.0..55.0f64, 5.0..15.0f64)
        ]
    }

    fn arb_mirror() -> impl Strategy<Value = ((f64, f64), f64, bool, bool, Option<u8>)> {
        (
            arb_place(),
            0.1..5.0f64,
            any::<bool>(),
            prop::bool::weighted(0.8),
            prop::option::weighted(0.2, 0..3u8),
        )
    }

    const CODES: [&str; 3] = ["DE", "US", "JP"];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// The index never changes a choice: indexed selection equals the
        /// brute-force one for any table and any client.
        #[test]
        fn index_agrees_with_brute_force(
            ms in prop::collection::vec(arb_mirror(), 0..40),
            clients in prop::collection::vec((arb_place(), any::<u64>(), any::<bool>(), prop::option::of(0..3u8), prop::bool::weighted(0.1), any::<bool>()), 20),
            ratio in 1.0..2.0f64,
            km in 0.0..1000.0f64,
        ) {
            let band = Selection { band_ratio: ratio, band_km: km };
            let mirrors = ms.iter().enumerate().map(|(i, &((lat, lon), weight, ipv6, eligible, country))| {
                let c = crate::config::Mirror {
                    name: format!("m{i}"),
                    // A third plain http, so https-only clients see another set.
                    url: format!("{}://m{i}.example.org/", if i % 3 == 0 { "http" } else { "https" }),
                    coord: Coord::new(lat, lon).unwrap(),
                    weight,
                    countries: country.map(|k| vec![Country::parse(CODES[k as usize]).unwrap()]),
                    ipv6,
                };
                let status = if eligible { Status::assumed_up() } else { Status::unprobed() };
                Mirror::from_config(&c, status)
            }).collect();
            let table = Table::new(mirrors, band);
            for &((lat, lon), network, ipv6, country, unknown, https_only) in &clients {
                let client = Client {
                    coord: if unknown { None } else { Coord::new(lat, lon) },
                    country: country.and_then(|k| Country::parse(CODES[k as usize])),
                    ipv6,
                    network,
                    https_only,
                    set: crate::catalog::ALL,
                };
                if let Some(id) = select(&table, &client) {
                    prop_assert!(table.get(id).https || !https_only, "a downgrade");
                }
                prop_assert_eq!(select(&table, &client), select_brute(&table, &client));
            }
        }
    }
}
