#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: Java 17 (TorchServe), nginx (the front door), .venv with the pinned packages.
# Re-running is cheap: packages are reinstalled only when requirements.txt changes.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = "0" ]; then SUDO=""; else SUDO="sudo"; fi
apt_updated=""
apt_install() {
  [ -n "$apt_updated" ] || { $SUDO apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1; }
if ! command -v java >/dev/null 2>&1 || [ "$(java_major)" != "17" ]; then
  echo "setup: installing Java 17 for TorchServe"
  apt_install openjdk-17-jre-headless
fi
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  echo "setup: installing nginx (the serving front door)"
  apt_install nginx-light
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if ! "$PY" -c "import sys; sys.exit(sys.version_info < (3, 11))"; then
  echo "setup: $PY is Python $("$PY" -c 'import sys; print(*sys.version_info[:2], sep=".")'); the code needs >= 3.11:" \
    "install python3.11 or set PYTHON to a newer interpreter" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing pinned packages (first run: about 2 minutes)"
  # (this machine's pip config names local indexes that may be absent: their warnings are dropped)
  quiet() { grep -v "is ignored: it is neither a file nor a directory" >&2 || true; }
  .venv/bin/python -m pip install -q --upgrade pip 2> >(quiet)
  .venv/bin/python -m pip install -q -r requirements.txt 2> >(quiet)
  echo "$want" > "$stamp"
fi
