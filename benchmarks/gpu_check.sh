#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py): one command, under 8 minutes on one H100 / H200, writing
# OUT/gpu_check.json and OUT/gpu_check.md. It only reads the device's settings, never changes them.
#   bash benchmarks/gpu_check.sh [--out DIR]                 # on a GPU
#   bash benchmarks/gpu_check.sh --cpu-dry-run [--out DIR]   # tiny sizes on the CPU (CI runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec timeout 1500 python benchmarks/gpu_check.py "$@"
