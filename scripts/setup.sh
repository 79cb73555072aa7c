#!/usr/bin/env bash
# Create .venv and install geobuild with every extra, torch pinned by constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip wheel setuptools
.venv/bin/python -m pip install -q -c constraints.txt -e '.[all]'
.venv/bin/python -c "import torch, torchvision; print('geobuild setup: torch', torch.__version__, 'torchvision', torchvision.__version__)"
