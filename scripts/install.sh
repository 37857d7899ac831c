#!/usr/bin/env bash
# Install zoft with its dev extras into the active Python environment.
# torch is pinned first: 2.13.0 is a CPU build available locally; an unpinned torch would pull
# a multi-GB CUDA build. The package's own range (torch>=2.4,<3) is then already satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[dev]"
python -c "import torch, zoft; print(f'zoft {zoft.__version__} with torch {torch.__version__}')"
