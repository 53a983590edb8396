#!/usr/bin/env bash
# Start a development mosquitto broker in the foreground on 127.0.0.1:PORT with persistence in DATADIR.
# usage: broker/start.sh PORT [DATADIR]     (DATADIR defaults to ./runs/broker-PORT)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
port="${1:?usage: $0 PORT [DATADIR]}"
case "$port" in (*[!0-9]*|'') echo "start.sh: PORT must be a number, got '$port'" >&2; exit 2;; esac
data="${2:-runs/broker-$port}"
mkdir -p "$data"
data="$(cd "$data" && pwd)"
bin="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
[ -x "$bin" ] || { echo "start.sh: mosquitto not found: run scripts/setup.sh" >&2; exit 3; }
conf="$data/mosquitto.conf"
{
  cat "$here/mosquitto.dev.conf"
  echo "listener $port 127.0.0.1"
  echo "persistence_location $data/"
  # Started as root, mosquitto would switch to the 'mosquitto' user and could not write $data.
  echo "user $(id -un)"
} > "$conf"
echo "mosquitto on 127.0.0.1:$port, data in $data" >&2
exec "$bin" -c "$conf"
