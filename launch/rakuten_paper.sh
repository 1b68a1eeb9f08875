#!/usr/bin/env bash
# The paper's recipe on the Rakuten challenge files, on GPUs, with the classic text expert as a third member:
#   text expert (CamemBERT-base) + image expert (ResNet152, 224 px), each with 4-fold out-of-fold
#   probabilities, and the TF-IDF expert (CPU, minutes) the same way -> decision-level fusion (8-fold CV;
#   1-layer and hidden-6 heads, 3 seeds each) over two expert sets, {text, image} as in the paper and
#   {text, tfidf, image} -> majority vote over the 12 fused runs on the test file -> a pipeline folder for
#   `mmclf predict`.
# Usage: launch/rakuten_paper.sh RAW_DIR OUT_DIR [ACCELERATE_CONFIG]
#   RAW_DIR holds X_train_update.csv, Y_train_CVw08PX.csv, X_test_update.csv, images/image_train, images/image_test
set -euo pipefail
raw=$1
out=$2
launch_config=${3:-accelerate_configs/1gpu-bf16.yaml}
run() { accelerate launch --config_file "$launch_config" -m mmclf "$@"; }

[ -d "$out/data" ] || mmclf build-dataset "$raw/X_train_update.csv" --labels "$raw/Y_train_CVw08PX.csv" \
    --images "$raw/images/image_train" --test "$raw/X_test_update.csv" --test-images "$raw/images/image_test" \
    --out "$out/data"
for expert in text image; do
    recipe=$([ $expert = text ] && echo text-camembert-base || echo image-resnet152-224)
    extra=$([ $expert = image ] && echo model.pretrained=true || true)
    resume=$([ -f "$out/$expert/config.yaml" ] && echo --resume || true)
    run train --config $recipe dataset="$out/data" output_dir="$out/$expert" folds=4 $extra $resume
done
# the classic text expert fits in one call on the CPU: no accelerate launch
resume=$([ -f "$out/tfidf/config.yaml" ] && echo --resume || true)
[ -f "$out/tfidf/metrics.json" ] || mmclf train --config text-tfidf dataset="$out/data" output_dir="$out/tfidf" folds=4 $resume
fusions=()
for experts in "text image" "text tfidf image"; do
    tables=() predict=()
    for expert in $experts; do
        tables+=("$out/$expert/probs/oof.parquet")
        predict+=("$out/$expert/probs/test.parquet")
    done
    for seed in 0 1 2; do
        for hidden in 0 6; do
            dir="$out/fusion-${experts// /-}-h$hidden-s$seed"
            [ -f "$dir/predictions.csv" ] || mmclf fuse --tables "${tables[@]}" --predict-tables "${predict[@]}" \
                --hidden-size $hidden --seed $seed --out "$dir"
            fusions+=("$dir")
        done
    done
done
mmclf ensemble --inputs "${fusions[@]}" --split test --out "$out/ensemble_test.csv"
mmclf pipeline --experts text="$out/text/model" tfidf="$out/tfidf/model" image="$out/image/model" \
    --fusions "${fusions[@]}" --out "$out/pipeline"
echo "test predictions: $out/ensemble_test.csv; fused out-of-fold scores: $out/fusion-*/cv_metrics.json"
echo "new listings: mmclf predict --pipeline $out/pipeline --input X.csv --images DIR --out submission.csv"
