#!/usr/bin/env bash
# run.sh — the workbench's real-browser test (tests/browser/test_workbench.py) against
# build/moetune: installs Chromium and its WebDriver from Debian's packages when missing (with
# sudo unless root, as scripts/setup.sh does), Selenium from PyPI into a venv under build/, then
# runs the test. Screenshots go to docs/workbench/. The rest of the suite never needs a browser.
# usage: bash tests/browser/run.sh [--moetune PATH] [--shots DIR] [--keep]
set -euo pipefail
cd "$(dirname "$0")/../.."

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "tests/browser: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

venv=${MOETUNE_BROWSER_VENV:-build/browser-venv}
if ! "$venv/bin/python" -c 'import selenium' >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q selenium
fi

args=("$@")
[[ " $* " == *" --moetune "* ]] || args=(--moetune build/moetune "${args[@]}")
timeout 900 "$venv/bin/python" tests/browser/test_workbench.py "${args[@]}"
