#!/usr/bin/env bash
# The test suite: set up .venv if needed, then pytest (arguments are passed to pytest).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup-venv.sh
bash scripts/browser-deps.sh  # Debian chromium + chromedriver for the browser test
export PATH="$root/.venv/bin:$PATH" DVC_SITE_CACHE_DIR="$root/.dvc/site-cache"
exec python -m pytest "$@"
