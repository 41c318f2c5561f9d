#!/usr/bin/env bash
# benches/soak.sh: the soak (tests/soak.rs), in release: 10,000 concurrent
# keep-alive connections on loopback, each asking once a second, while a
# mirror flaps every 4 s and mirrors.toml is rewritten (and reloaded) every
# 5 s; zero failed connections, right redirects only, memory flat.
# SOAK_SECS (default 120) sets the length. Each process needs about 10,100
# open files: the test raises its soft limit to the hard one (`ulimit -Hn`)
# and the service inherits it. Its figures go in benches/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export SOAK_SECS=${SOAK_SECS:-120}
cargo test --release --test soak -- --ignored --nocapture 2>&1 | grep -E "^soak:|test result|panicked|failed"
