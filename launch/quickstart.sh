#!/usr/bin/env bash
# The main job on the built-in demo catalog: catalog -> dataset -> experts -> fusion -> ensemble -> report.
# Usage: launch/quickstart.sh [OUT_DIR] [extra `mmclf demo` options]
set -euo pipefail
out=${1:-demo_out}
shift || true
export HF_HUB_OFFLINE=1
mmclf demo --out "$out" "$@"
