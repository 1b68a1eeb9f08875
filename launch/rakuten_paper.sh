#!/usr/bin/env bash
# The paper's whole recipe on the Rakuten challenge files, on GPUs, in one resumable command:
#   build the dataset -> label-noise removal (4 ResNet50 folds + cleanlab, 10 % of the flagged rows removed)
#   -> on the cleaned data: CamemBERT-base and CamemBERT-large text experts, the ResNet152 image expert at
#   224 px (stage 1) then with DCL at 448 px from it (stage 2), and the classic TF-IDF text expert (CPU)
#   -> decision-level fusion trained on the experts' validation probabilities (as the paper; 8-fold CV),
#   12 runs: 3 expert sets x 2 heads (1 layer, hidden 6) x 2 seeds -> majority vote of the 12 on the test
#   file -> its out-of-fold score on validation -> a pipeline folder -> predictions for the raw test file.
# Usage: launch/rakuten_paper.sh RAW_DIR OUT_DIR [ACCELERATE_CONFIG]
#   RAW_DIR holds X_train_update.csv, Y_train_CVw08PX.csv, X_test_update.csv, images/image_train, images/image_test.
#   ACCELERATE_CONFIG: accelerate_configs/1gpu-bf16.yaml (default), ddp-bf16.yaml, fsdp-bf16.yaml, ...
# A finished step is skipped and an interrupted training resumes from its last checkpoint, so rerun the same
# command after a failure. Each step logs to OUT_DIR/logs/<step>.log.
set -euo pipefail
raw=$1
out=$2
launch_config=${3:-accelerate_configs/1gpu-bf16.yaml}
source "$(dirname "$0")/steps.sh"
launch() { accelerate launch --config_file "$launch_config" -m mmclf "$@"; }
data=$out/denoise/dataset
experts=$out/experts

step build-dataset "$out/data/summary.json" \
    mmclf build-dataset "$raw/X_train_update.csv" --labels "$raw/Y_train_CVw08PX.csv" \
    --images "$raw/images/image_train" --test "$raw/X_test_update.csv" --test-images "$raw/images/image_test" \
    --out "$out/data"
step denoise "$out/denoise/report.md" \
    launch denoise --config denoise-resnet50-4fold dataset="$out/data" output_dir="$out/denoise" $(resume_flag "$out/denoise")
for run in text-base:text-camembert-base text-large:text-camembert-large image-224:image-resnet152-224; do
    name=${run%%:*} recipe=${run#*:}
    step "train-$name" "$experts/$name/metrics.json" \
        launch train --config "$recipe" dataset="$data" output_dir="$experts/$name" $(resume_flag "$experts/$name")
done
step train-image "$experts/image/metrics.json" \
    launch train --config image-resnet152-dcl-448 dataset="$data" output_dir="$experts/image" \
    init_from="$experts/image-224" $(resume_flag "$experts/image")
step train-tfidf "$experts/tfidf/metrics.json" \
    mmclf train --config text-tfidf dataset="$data" output_dir="$experts/tfidf" $(resume_flag "$experts/tfidf")

fusions=()
fuse_sets validation text-base,image text-large,image text-base,text-large,tfidf,image
vote_and_score "$data"
step pipeline "$out/pipeline/pipeline.json" \
    mmclf pipeline --experts text-base="$experts/text-base/model" text-large="$experts/text-large/model" \
    tfidf="$experts/tfidf/model" image="$experts/image/model" --fusions "${fusions[@]}" --out "$out/pipeline"
step predict "$out/submission.csv" \
    mmclf predict --pipeline "$out/pipeline" --input "$raw/X_test_update.csv" --images "$raw/images/image_test" \
    --out "$out/submission.csv" --device "$(python -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')"
echo "submission: $out/submission.csv; ensemble scored out of fold on validation: $out/evaluation-validation/report.md"
echo "new listings: mmclf predict --pipeline $out/pipeline --input X.csv --images DIR --out predictions.csv"
