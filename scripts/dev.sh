#!/usr/bin/env bash
# Set up .venv (once) and start the app or run the tests.
#   bash scripts/dev.sh app     # the app in tiny mode on the CPU (or FLUX.1-dev where CUDA is)
#   bash scripts/dev.sh test    # the whole test suite (pytest arguments pass through)
#   bash scripts/dev.sh test -m "not browser and not slow"   # a developer's loop: no Chromium, nothing over ~20 s
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${LORA_SPACE_VENV:-.venv}
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
stamp="$venv/.installed"
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ requirements-dev.txt -nt "$stamp" ]; then
  "$venv/bin/python" -m pip install -q --upgrade pip
  # The CPU build of torch first, so that requirements do not pull a CUDA build of several GB
  # (set PIP_EXTRA_INDEX_URL to a CPU wheel index where the default index has only CUDA builds).
  "$venv/bin/python" -m pip install -q "torch==2.13.0"
  "$venv/bin/python" -m pip install -q -r requirements-dev.txt
  touch "$stamp"
fi

case "${1:-}" in
  app) exec "$venv/bin/python" app.py ;;
  test)
    shift
    # The UI test drives a real Chromium; install Debian's where we may (root with apt-get).
    if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    fi
    exec "$venv/bin/python" -m pytest "$@" ;;
  *) echo "usage: bash scripts/dev.sh app|test [pytest args]" >&2; exit 2 ;;
esac
