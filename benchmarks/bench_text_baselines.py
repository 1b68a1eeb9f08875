"""The classic text expert (`text-tfidf`) against the text classifiers a CPU user would write, on real listings:
5-fold stratified cross-validation over every labelled row, the same folds for every method.

    pip install -e ".[bench]"
    python benchmarks/bench_text_baselines.py --real ../shared/data/rakuten_sample --workdir /tmp/bench-text

Methods: scikit-learn's five-line pipeline (TF-IDF word 1-2 + char_wb 2-5 n-grams, sublinear tf,
`LinearSVC(C=0.5, class_weight="balanced")`) over "title description"; fastText supervised (word bigrams, and
bigrams + character 2-5-gram subwords; 25 epochs, lr 0.5, dim 100); mmclf `text-tfidf` (the recipe's defaults)
and `text-tfidf-tuned` (its grid searched inside each training fold). Each method runs in a fresh child
process, so its peak RSS is its own (imports included; "RSS growth" subtracts the RSS after imports).
Prints one Markdown table: out-of-fold macro-F1 over every labelled row, fit seconds per fold (mean, wall;
vectorising included), peak RSS. For the probabilistic methods it also gives the out-of-fold log-loss.

Then decision-level fusion on the rows with an image: `text-tfidf` and the tiny image expert (`image-tiny`)
trained with k-fold out-of-fold tables on those rows alone, fused by `mmclf fuse` (8-fold heads); the fused
out-of-fold macro-F1 beside each expert's. Timings share 2 cores with other work: compare them within a run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("sklearn-linearsvc", "fasttext-bigrams", "fasttext-bigrams-subwords", "text-tfidf", "text-tfidf-tuned")


def labelled_rows(dataset_dir: Path):
    from datasets import concatenate_datasets, load_from_disk

    dataset = load_from_disk(str(dataset_dir))
    return concatenate_datasets([dataset[s] for s in ("train", "validation") if s in dataset])


def cv_folds(labels, folds: int, seed: int):
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    return list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels))


def sklearn_fit_predict(rows, train, test, classes):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline, make_union
    from sklearn.svm import LinearSVC

    texts = [f"{t} {d}" for t, d in zip(rows["title"], rows["description"])]
    pipeline = make_pipeline(
        make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                   TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
        LinearSVC(C=0.5, class_weight="balanced"))
    labels = rows["label"]
    start = time.perf_counter()
    pipeline.fit([texts[i] for i in train], [labels[i] for i in train])
    seconds = time.perf_counter() - start
    return pipeline.predict([texts[i] for i in test]), None, seconds


def fasttext_fit_predict(rows, train, test, classes, subwords: bool, workdir: Path):
    import fasttext
    import numpy as np

    from mmclf.experts.tfidf import normalise

    texts = [normalise(f"{t} {d}", strip_accents=False).replace("\n", " ")
             for t, d in zip(rows["title"], rows["description"])]
    labels = rows["label"]
    path = workdir / "fasttext-train.txt"
    path.write_text("".join(f"__label__{labels[i]} {texts[i]}\n" for i in train))
    start = time.perf_counter()
    model = fasttext.train_supervised(str(path), epoch=25, lr=0.5, dim=100, wordNgrams=2, minCount=1, loss="softmax",
                                      minn=2 if subwords else 0, maxn=5 if subwords else 0, thread=2, verbose=0)
    seconds = time.perf_counter() - start
    got, probs = model.predict([texts[i] for i in test], k=classes)
    table = np.zeros((len(test), classes))
    for row, (names, values) in enumerate(zip(got, probs)):
        table[row, [int(n.removeprefix("__label__")) for n in names]] = values
    return table.argmax(axis=1), table, seconds


def mmclf_fit_predict(rows, train, test, classes, recipe: str):
    from mmclf.experts.tfidf import TfidfExpert
    from mmclf.inference import expert_probabilities
    from mmclf.training.config import load_config

    config = load_config(recipe, ["dataset=unused", "output_dir=unused"])
    expert = TfidfExpert.build(config["model"], rows.features["label"].names)
    part = rows.select(train)
    start = time.perf_counter()
    expert.fit(part)
    seconds = time.perf_counter() - start
    probs = expert_probabilities(expert, rows.select(test))
    return probs.argmax(axis=1), probs, seconds, expert.metadata


def run_method(method: str, dataset_dir: Path, folds: int, seed: int, workdir: Path) -> dict:
    """One method over every fold, in this process (the child)."""
    import resource

    import numpy as np

    from mmclf.scoring import macro_f1

    rows = labelled_rows(dataset_dir)
    labels = np.asarray(rows["label"])
    classes = len(rows.features["label"].names)
    imported_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    predictions, probs, seconds, chosen = np.zeros_like(labels), np.zeros((len(labels), classes)), [], []
    for train, test in cv_folds(labels, folds, seed):
        if method == "sklearn-linearsvc":
            predicted, p, s = sklearn_fit_predict(rows, train, test, classes)
        elif method.startswith("fasttext"):
            predicted, p, s = fasttext_fit_predict(rows, train, test, classes, method.endswith("subwords"), workdir)
        else:
            predicted, p, s, metadata = mmclf_fit_predict(rows, train, test, classes, method)
            chosen.append(metadata.get("tuning", {}).get("chosen"))
        predictions[test], seconds = predicted, [*seconds, s]
        if p is not None:
            probs[test] = p
    log_loss = None if method == "sklearn-linearsvc" else float(
        -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "macro_f1": macro_f1(labels, predictions), "fold_macro_f1": [
        macro_f1(labels[test], predictions[test]) for _, test in cv_folds(labels, folds, seed)],
        "fit_seconds": float(np.mean(seconds)), "log_loss": log_loss, "peak_mib": peak,
        "rss_growth_mib": peak - imported_mib, "chosen": [c for c in chosen if c]}


def run_in_child(method: str, args) -> dict:
    command = [sys.executable, __file__, "--child", method, "--dataset", str(args.dataset), "--folds", str(args.folds),
               "--seed", str(args.seed), "--workdir", str(args.workdir)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"{method}: {result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def image_rows_dataset(dataset_dir: Path, workdir: Path) -> Path:
    from datasets import DatasetDict, load_from_disk

    out = workdir / "dataset-with-image"
    if not out.is_dir():
        dataset = load_from_disk(str(dataset_dir))
        DatasetDict({s: dataset[s].filter(lambda has: has, input_columns="has_image")
                     for s in ("train", "validation") if s in dataset}).save_to_disk(str(out))
    return out


def fusion_on_image_rows(dataset_dir: Path, workdir: Path, folds: int) -> dict:
    from mmclf import stages

    dataset = image_rows_dataset(dataset_dir, workdir)
    runs = {}
    for name, recipe in (("tfidf", "text-tfidf"), ("image", "image-tiny")):
        runs[name] = workdir / f"image-rows-{name}"
        if not (runs[name] / "metrics.json").is_file():
            stages.train(recipe, [f"dataset={dataset}", f"output_dir={runs[name]}", f"folds={folds}",
                                  "predict_splits=[]", "resume=true" if runs[name].exists() else "resume=false"])
    fusion_dir = workdir / "image-rows-fusion"
    stages.fuse(tables=[str(runs[n] / "probs" / "oof.parquet") for n in ("tfidf", "image")], output_dir=str(fusion_dir))
    metrics = json.loads((fusion_dir / "cv_metrics.json").read_text())
    return {"rows": len(labelled_rows(dataset)), "experts": metrics["expert_macro_f1"], "fused": metrics["oof_macro_f1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", help="folder with X_sample.csv, Y_sample.csv, image_train/ (the real sample)")
    parser.add_argument("--dataset", help="an already built dataset (instead of --real)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--fusion-folds", type=int, default=4, help="folds of the experts on the rows with an image "
                        "(the rarest class there has 4 rows)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--no-fusion", action="store_true")
    parser.add_argument("--workdir", help="where the dataset and runs go (default: a temporary folder)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    args.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mmclf-bench-text-"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.child:
        print(json.dumps(run_method(args.child, Path(args.dataset), args.folds, args.seed, args.workdir)))
        return
    if not args.dataset:
        from mmclf.data.build import build_dataset

        if not args.real:
            parser.error("give --real (the sample's folder) or --dataset")
        args.dataset = args.workdir / "dataset-real"
        if not (args.dataset / "summary.json").is_file():
            real = Path(args.real)
            build_dataset(real / "X_sample.csv", real / "Y_sample.csv", real / "image_train", args.dataset, overwrite=True)

    print(f"{len(labelled_rows(Path(args.dataset))):,} labelled rows, {args.folds}-fold stratified CV (seed {args.seed})")
    print("| method | CV macro-F1 | per fold | fit s / fold | log-loss | peak RSS MiB | RSS growth MiB |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for method in args.methods:
        r = run_in_child(method, args)
        print(f"| {method} | {r['macro_f1']:.4f} | {' '.join(f'{f:.3f}' for f in r['fold_macro_f1'])} | "
              f"{r['fit_seconds']:.1f} | {'-' if r['log_loss'] is None else format(r['log_loss'], '.3f')} | "
              f"{r['peak_mib']:.0f} | {r['rss_growth_mib']:.0f} |", flush=True)
        if r["chosen"]:
            print(f"  chosen per fold: {r['chosen']}", flush=True)
    if not args.no_fusion:
        fusion = fusion_on_image_rows(Path(args.dataset), args.workdir, args.fusion_folds)
        print(f"rows with an image: {fusion['rows']}; {args.fusion_folds}-fold out-of-fold macro-F1: "
              + ", ".join(f"{name} {score:.4f}" for name, score in fusion["experts"].items())
              + f"; decision-level fusion {fusion['fused']:.4f}")


if __name__ == "__main__":
    main()
