#!/usr/bin/env bash
# Install the system tools maillab's tests and hands-on lab use, when they are missing:
# Graphviz (maillab graph --format svg|png), dig, swaks, telnet, fetchmail.
set -euo pipefail
need=()
command -v dot >/dev/null || need+=(graphviz)
command -v dig >/dev/null || need+=(dnsutils)
command -v swaks >/dev/null || need+=(swaks)
command -v telnet >/dev/null || need+=(telnet)
command -v fetchmail >/dev/null || need+=(fetchmail)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "maillab: please install: ${need[*]} (some tests and commands need them)" >&2
  exit 0
fi
echo "maillab: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
