#!/usr/bin/env bash
# Prints the medians of the last `cargo bench --bench hot_path` run and the
# ratios RESULTS.md records (each against a reference from the same run).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import json, pathlib
root = pathlib.Path("target/criterion")
def med(group, name):
    p = root / group / name / "new" / "estimates.json"
    return json.loads(p.read_text())["median"]["point_estimate"] if p.exists() else None
rows = [("geoip", n) for n in ("shipped-flat-country", "nested-city", "flat-city")]
rows += [("geoip", f"{db}-city-{fam}-cold") for db in ("compact", "full") for fam in ("v4", "mixed")]
rows += [("select", n) for n in ("10", "100", "1000", "10000")]
rows += [("lookup+select_100", ""), ("handler", "redirect"), ("handler", "redirect-per-file"), ("handler", "redirect-files-one-set"), ("handler", "redirect-no-metrics"), ("handler", "reference")]
for g, n in rows:
    v = med(g, n)
    print(f"{g + '/' + n:32} {'-' if v is None else f'{v:9.1f} ns'}")
def ratio(label, a, b):
    if a and b:
        print(f"{label:48} {a / b:6.2f}x")
print()
ratio("select 10,000 mirrors / 10 mirrors", med("select", "10000"), med("select", "10"))
ratio("handler / reference (fixed 302)", med("handler", "redirect"), med("handler", "reference"))
ratio("handler per file / one set, same requests", med("handler", "redirect-per-file"), med("handler", "redirect-files-one-set"))
ratio("handler with metrics / without", med("handler", "redirect"), med("handler", "redirect-no-metrics"))
ratio("lookup+select 100 / handler reference", med("lookup+select_100", ""), med("handler", "reference"))
ratio("nested city lookup / shipped country lookup", med("geoip", "nested-city"), med("geoip", "shipped-flat-country"))
ratio("full city / shipped default, IPv4, cold", med("geoip", "full-city-v4-cold"), med("geoip", "compact-city-v4-cold"))
ratio("full city / shipped default, a quarter IPv6, cold", med("geoip", "full-city-mixed-cold"), med("geoip", "compact-city-mixed-cold"))
PY
