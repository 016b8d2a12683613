#!/usr/bin/env bash
# Install the system tools maillab's tests and hands-on lab use, when they are missing:
# Graphviz (maillab graph --format svg|png), dig, swaks, telnet, fetchmail, curl and jq
# (docs/ui/example.sh, which tests/web runs), and Chromium
# (the dashboard's browser tests drive Debian's chromium through Playwright, which
# downloads no browser of its own).
set -euo pipefail
need=()
command -v dot >/dev/null || need+=(graphviz)
command -v dig >/dev/null || need+=(dnsutils)
command -v swaks >/dev/null || need+=(swaks)
command -v telnet >/dev/null || need+=(telnet)
command -v fetchmail >/dev/null || need+=(fetchmail)
command -v curl >/dev/null || need+=(curl)
command -v jq >/dev/null || need+=(jq)
{ [ -x "${MAILLAB_CHROMIUM:-/usr/bin/chromium}" ] || command -v chromium; } >/dev/null || need+=(chromium fonts-liberation)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "maillab: please install: ${need[*]} (some tests and commands need them)" >&2
  # under CI the browser tests fail without a browser: say so now
  [ "${CI:-}" != "true" ] || [[ " ${need[*]} " != *" chromium "* ]] || exit 1
  exit 0
fi
echo "maillab: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
