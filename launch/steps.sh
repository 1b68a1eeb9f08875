# Shared by the launch scripts (sourced, not run). Needs $out, the run folder.
#
# step NAME DONE_FILE COMMAND...   runs COMMAND unless DONE_FILE exists (a finished step is skipped, so a
#                                  rerun after a failure continues where it stopped); its output is appended
#                                  to $out/logs/NAME.log; a failure stops the script and shows the log's end.
# resume_flag RUN_DIR              --resume when RUN_DIR holds a started run (an interrupted training continues)
# fuse_sets SPLITS SETS...         decision-level fusion runs for each expert set ("a,b,c": names of runs in
#                                  $out/experts), head (hidden 0 and 6) and seed (0 and 1), trained on the
#                                  experts' SPLITS table (e.g. validation), predicting their test tables;
#                                  appends the run folders to the array `fusions`.
# vote_and_score DATASET           majority vote of the `fusions` on the test split ($out/ensemble_test.csv), and of
#                                  their out-of-fold probabilities on validation, evaluated ($out/evaluation-validation)

export MMCLF_PROGRESS_INTERVAL=${MMCLF_PROGRESS_INTERVAL:-30}  # progress as a log line every 30 s

step() {
    local name=$1 done_file=$2
    shift 2
    if [ -e "$done_file" ]; then
        echo "[skip] $name (done: $done_file)"
        return 0
    fi
    mkdir -p "$out/logs"
    local log="$out/logs/$name.log" started=$SECONDS
    echo "[run ] $name (log: $log)"
    echo "### $(date '+%F %T') $*" >> "$log"
    if ! "$@" >> "$log" 2>&1; then
        echo "[fail] $name: the end of $log follows; fix the cause and rerun the script to continue" >&2
        tail -n 25 "$log" >&2
        exit 1
    fi
    echo "[done] $name in $((SECONDS - started)) s"
}

resume_flag() {
    if [ -f "$1/config.yaml" ]; then echo --resume; fi
}

fuse_sets() {
    local splits=$1 set expert hidden seed dir
    shift
    for set in "$@"; do
        local tables=() predict=()
        for expert in ${set//,/ }; do
            tables+=("$out/experts/$expert/probs/$splits.parquet")
            predict+=("$out/experts/$expert/probs/test.parquet")
        done
        for hidden in 0 6; do
            for seed in 0 1; do
                dir="$out/fusion/${set//,/-}-h$hidden-s$seed"
                step "fuse-${set//,/-}-h$hidden-s$seed" "$dir/predictions.csv" \
                    mmclf fuse --tables "${tables[@]}" --train-splits "$splits" --predict-tables "${predict[@]}" \
                    --hidden-size "$hidden" --seed "$seed" --out "$dir"
                fusions+=("$dir")
            done
        done
    done
}

vote_and_score() {
    local dataset=$1
    local oof=("${fusions[@]/%//probs/oof.parquet}")  # each fused run's out-of-fold probabilities of validation rows
    step ensemble "$out/ensemble_test.csv" mmclf ensemble --inputs "${fusions[@]}" --split test --out "$out/ensemble_test.csv"
    step ensemble-validation "$out/ensemble_validation.csv" \
        mmclf ensemble --inputs "${oof[@]}" --split validation --out "$out/ensemble_validation.csv"
    step evaluate-validation "$out/evaluation-validation/report.json" \
        mmclf evaluate --predictions "$out/ensemble_validation.csv" --dataset "$dataset" --split validation \
        --out "$out/evaluation-validation"
}
