#!/usr/bin/env bash
# Installs the Debian packages the tests use as real servers and tools. Idempotent: installs only
# what is missing. Needs root (or sudo) and a reachable Debian mirror.
set -euo pipefail
need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The Debian packages start their own services; the tests start throwaway instances instead.
for service in postgresql prometheus redis-server; do
  $sudo service "$service" stop >/dev/null 2>&1 || true
done
