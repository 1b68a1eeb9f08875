#!/usr/bin/env bash
# The paper's whole recipe on the built-in demo catalog with the tiny recipes, on the CPU, in minutes:
# `mmclf run quickstart` (mmclf/workflows/quickstart.yaml). Finished steps are skipped on a rerun.
# Usage: launch/quickstart.sh [OUT_DIR] [ROWS] [EPOCHS] [KEY=VALUE ...]
set -euo pipefail
out=${1:-quickstart_out}
rows=${2:-3000}
epochs=${3:-null}
shift $(( $# < 3 ? $# : 3 ))
export HF_HUB_OFFLINE=1 MMCLF_PROGRESS_INTERVAL=${MMCLF_PROGRESS_INTERVAL:-30}
exec mmclf run quickstart --out "$out" rows="$rows" epochs="$epochs" "$@"
