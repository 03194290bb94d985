#!/usr/bin/env bash
# Rehearse the paper path end to end on CPU, offline (config/rehearsal.yaml read after
# config/paper.yaml): every rule of the paper's DAG on tiny checkpoints of the paper's models and
# lm-eval's own paper tasks. Extra arguments go to snakemake (e.g. -n, or --cores 4).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m selectmoe build-rehearsal results/rehearsal/fixtures
.venv/bin/snakemake --cores "${SELECTMOE_CORES:-2}" \
  --configfile config/paper.yaml config/rehearsal.yaml "$@"
echo "[rehearsal] summary: results/rehearsal/summary.md"
