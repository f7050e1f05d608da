#!/usr/bin/env bash
# The main job: set up .venv if needed, then `dvc repro` with the grid's cells run
# $PARAX_BENCH_JOBS (default 2) at a time (pipelines/parallel.py; -f recomputes everything).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup-venv.sh
export PATH="$root/.venv/bin:$PATH" DVC_SITE_CACHE_DIR="$root/.dvc/site-cache"
exec python -m pipelines.parallel "$@"
