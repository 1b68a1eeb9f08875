#!/usr/bin/env bash
# The paper's whole recipe on the Rakuten challenge files, on GPUs, in one resumable command:
# `mmclf run rakuten-paper` (mmclf/workflows/rakuten-paper.yaml), every network training under
# `accelerate launch --config_file ACCELERATE_CONFIG`. Rerun the same command after a failure to continue.
# Usage: launch/rakuten_paper.sh RAW_DIR OUT_DIR [ACCELERATE_CONFIG] [KEY=VALUE ...]
#   RAW_DIR holds X_train_update.csv, Y_train_CVw08PX.csv, X_test_update.csv, images/image_train, images/image_test.
set -euo pipefail
raw=$1 out=$2 config=${3:-accelerate_configs/1gpu-bf16.yaml}
shift $(( $# < 3 ? $# : 3 ))
device=$(python -c 'import torch; print("cuda" if torch.cuda.is_available() else "null")')
export MMCLF_PROGRESS_INTERVAL=${MMCLF_PROGRESS_INTERVAL:-30}
exec mmclf run rakuten-paper --out "$out" raw_dir="$raw" accelerate_config="$config" device="$device" "$@"
