#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver for the browser tests (pytest -m browser).
#
# A no-op when both `chromium` and `chromedriver` are already on PATH. Uses the distro
# packages so the browser and its driver always match and Selenium Manager never has to
# download anything; sudo is used only when not running as root.
set -euo pipefail

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
sudo=""
if [[ "$(id -u)" != 0 ]]; then
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends chromium chromium-driver
