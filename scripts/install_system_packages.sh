#!/usr/bin/env bash
# Debian packages the project needs: Hunspell's library (to build pyhunspell) and its dictionaries;
# Chromium and its WebDriver for the test of the human-evaluation page (tests/study/test_human_eval.py).
set -euo pipefail
PACKAGES="libhunspell-dev hunspell-en-us hunspell-fr hunspell-pt-pt hunspell-pt-br hunspell-ru hunspell-de-de chromium chromium-driver"
missing=$(for p in $PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
[ -z "$missing" ] && exit 0
echo "installing Debian packages: $missing"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
