#!/usr/bin/env bash
# Create .venv and install selectmoe with its pinned dependencies.
#
#   SELECTMOE_PYTHON      interpreter for the venv (default: python3.11, else python3)
#   SELECTMOE_TORCH_SPEC  the torch requirement, installed first (default: torch==2.13.0, which
#                         on a CPU-only machine with a local wheel takes that wheel); a GPU user sets
#                         e.g. SELECTMOE_TORCH_SPEC="torch==2.13.0" SELECTMOE_TORCH_INDEX_URL=<CUDA index>
#   SELECTMOE_TORCH_INDEX_URL  optional extra index for torch (a CUDA build's index)
#   SELECTMOE_EXTRAS      extras to install (default: dev)
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin=${SELECTMOE_PYTHON:-$(command -v python3.11 || command -v python3)}
torch_spec=${SELECTMOE_TORCH_SPEC:-torch==2.13.0}
extras=${SELECTMOE_EXTRAS:-dev}

if [ ! -x .venv/bin/python ]; then
  echo "[install] creating .venv with $python_bin"
  "$python_bin" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --disable-pip-version-check -q)

# torch first and on its own: installed by an exact spec it comes from the local CPU wheel (or the
# index the user chose); the later install then finds it satisfied and pulls no CUDA packages.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "[install] $torch_spec"
  if [ -n "${SELECTMOE_TORCH_INDEX_URL:-}" ]; then
    "${pip[@]}" "$torch_spec" --extra-index-url "$SELECTMOE_TORCH_INDEX_URL"
  else
    "${pip[@]}" "$torch_spec"
  fi
fi

echo "[install] selectmoe[$extras] with constraints.txt"
"${pip[@]}" -c constraints.txt -e ".[$extras]"
.venv/bin/python -c "import torch, transformers, snakemake; print('[install] torch', torch.__version__, '| transformers', transformers.__version__, '| cuda', torch.cuda.is_available())"
