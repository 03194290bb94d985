#!/usr/bin/env bash
# Set up everything and run the demo workflow end to end: results/summary.csv and .md.
# Extra arguments go to snakemake (e.g. --config selection='{...}' or -n).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1}
export TOKENIZERS_PARALLELISM=false
.venv/bin/snakemake --cores "${SELECTMOE_CORES:-2}" "$@"
echo "[demo] summary: results/summary.md"
cat results/summary.md
