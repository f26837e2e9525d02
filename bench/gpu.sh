#!/usr/bin/env bash
# Issue 12's GPU benchmark (bench/gpu.py) on one GPU. Installs nothing: run it where raygan is
# installed, from any directory. Arguments go to gpu.py (e.g. --skip-ray, --out PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
exec "$python" bench/gpu.py "$@"
