#!/usr/bin/env bash
# The paper's whole recipe on the built-in demo catalog with the tiny recipes, on CPU, in minutes:
#   demo catalog -> dataset -> label-noise removal (denoise-tiny) -> on the cleaned data: the tiny text expert,
#   the classic TF-IDF text expert, the tiny image expert (stage 1) then DCL from it (stage 2) -> decision-level
#   fusion trained on the experts' validation probabilities, 12 runs: 3 expert sets x 2 heads x 2 seeds ->
#   majority vote on the test split -> its out-of-fold score on validation -> a pipeline folder -> predictions
#   for the raw test file through the pipeline, evaluated against the catalog's test labels.
# Usage: launch/quickstart.sh [OUT_DIR] [ROWS] [EPOCHS]
#   OUT_DIR: quickstart_out; ROWS: training rows of the catalog (3000); EPOCHS: overrides the tiny recipes' epochs.
# A finished step is skipped, so a rerun after a failure continues; each step logs to OUT_DIR/logs/<step>.log.
# `mmclf demo` is the same data flow with k-fold experts and the paper's Table 1.
set -euo pipefail
out=${1:-quickstart_out}
rows=${2:-3000}
epochs=${3:+training.epochs=$3}
export HF_HUB_OFFLINE=1
source "$(dirname "$0")/steps.sh"
catalog=$out/catalog
data=$out/denoise/dataset
experts=$out/experts

step demo-data "$catalog/README.md" mmclf demo-data --out "$catalog" --rows "$rows" --overwrite
step build-dataset "$out/data/summary.json" \
    mmclf build-dataset "$catalog/X_train.csv" --labels "$catalog/Y_train.csv" --images "$catalog/image_train" \
    --test "$catalog/X_test.csv" --test-labels "$catalog/Y_test.csv" --test-images "$catalog/image_test" \
    --validation-fraction 0.2 --out "$out/data"  # fusion trains on the validation rows: a fifth keeps every class in it
step denoise "$out/denoise/report.md" \
    mmclf denoise --config denoise-tiny dataset="$out/data" output_dir="$out/denoise" "denoise.splits=[train]" $epochs \
    $(resume_flag "$out/denoise")  # the paper cleans validation too; on a small catalog that could empty a class there
for run in text:text-tiny image-stage1:image-tiny; do
    name=${run%%:*} recipe=${run#*:}
    step "train-$name" "$experts/$name/metrics.json" \
        mmclf train --config "$recipe" dataset="$data" output_dir="$experts/$name" $epochs $(resume_flag "$experts/$name")
done
step train-image "$experts/image/metrics.json" \
    mmclf train --config image-tiny-dcl dataset="$data" output_dir="$experts/image" init_from="$experts/image-stage1" \
    $epochs $(resume_flag "$experts/image")
step train-tfidf "$experts/tfidf/metrics.json" \
    mmclf train --config text-tfidf dataset="$data" output_dir="$experts/tfidf" $(resume_flag "$experts/tfidf")

fusions=()
fuse_sets validation text,image tfidf,image text,tfidf,image
vote_and_score "$data"
step pipeline "$out/pipeline/pipeline.json" \
    mmclf pipeline --experts text="$experts/text/model" tfidf="$experts/tfidf/model" image="$experts/image/model" \
    --fusions "${fusions[@]}" --out "$out/pipeline"
step predict "$out/submission.csv" \
    mmclf predict --pipeline "$out/pipeline" --input "$catalog/X_test.csv" --images "$catalog/image_test" \
    --out "$out/submission.csv"
step evaluate-test "$out/evaluation-test/report.json" \
    mmclf evaluate --predictions "$out/submission.csv" --dataset "$data" --split test --out "$out/evaluation-test"
python - "$out" <<'PY'
import json, sys
out = sys.argv[1]
for split in ("validation", "test"):
    report = json.load(open(f"{out}/evaluation-{split}/report.json"))
    print(f"ensemble of 12 fused runs, {split} ({'out of fold' if split == 'validation' else 'held out'}): "
          f"macro-F1 {report['macro_f1']:.4f} over {report['num_rows']} rows")
PY
echo "report: $out/evaluation-test/report.md; pipeline: $out/pipeline; submission: $out/submission.csv"
