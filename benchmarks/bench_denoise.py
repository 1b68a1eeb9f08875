"""Label-noise removal (`mmclf denoise`) measured on demo catalogs with known flipped labels, and run on real data.

    OMP_NUM_THREADS=1 python benchmarks/bench_denoise.py --workdir /tmp/mmclf-denoise-bench \
        [--noise 0.05 0.10] [--seeds 0 1 2] [--rows 3000] [--real /work/shared/data/rakuten_sample]

For each noise level: a demo catalog with that fraction of train labels flipped within their family
(`label_noise.csv` records them; its index is the dataset id), `mmclf denoise --config denoise-tiny` once
(4 fold models), then re-ranked without training under both rankings (the paper's normalized margin and
self-confidence) and both cuts (10 % of the flagged list, the paper's; 10 % of all ranked rows): precision and
recall of the removed rows against the flips. Then the image expert (`image-tiny`, same recipe and epochs) is
trained on the noisy dataset and on the two cleaned ones (self-confidence ranking, both cuts), one run per seed,
and scored by macro-F1 on the test split, whose labels are clean.

With --real: the sample is built into a dataset and denoised with the text expert (`text-tiny` with 4 folds
and the paper's settings), then again from the out-of-fold probabilities of a TF-IDF + logistic regression
model on the same folds (`denoise.probabilities`): how many rows are flagged, and the contact sheets to look at.
Finished steps found in the workdir are reused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mmclf.data.build import build_dataset
from mmclf.demo_catalog import generate_catalog
from mmclf.denoise import SECTIONS, denoise
from mmclf.evaluation import macro_f1
from mmclf.probability_tables import ProbabilityTable
from mmclf.training.config import load_config
from mmclf.training.train import train_expert

RANKINGS = (("normalized_margin", "flagged"), ("normalized_margin", "all"),
            ("self_confidence", "flagged"), ("self_confidence", "all"))
CLEANED_WITH = "self_confidence"  # the ranking whose cleaned datasets (both cuts) the expert is trained on
CUTS = {"flagged": "10 % of the flagged list", "all": "10 % of all rows"}


def timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return result, round(time.perf_counter() - started, 1)


def demo_dataset(root: Path, rows: int, noise: float) -> tuple[Path, set[str]]:
    catalog, dataset = root / "catalog", root / "dataset"
    if not (catalog / "label_noise.csv").is_file():
        generate_catalog(catalog, rows=rows, seed=0, label_noise=noise, overwrite=True, progress=False)
    if not (dataset / "summary.json").is_file():
        build_dataset(catalog / "X_train.csv", catalog / "Y_train.csv", catalog / "image_train", dataset,
                      test_file=catalog / "X_test.csv", test_labels_file=catalog / "Y_test.csv",
                      test_images_dir=catalog / "image_test", seed=0, overwrite=True)
    flipped = set(pd.read_csv(catalog / "label_noise.csv")["index"].astype(str))
    return dataset, flipped


def run_denoise(recipe: str, dataset: Path, out: Path, overrides=()) -> dict:
    denoise(load_config(recipe, [f"dataset={dataset}", f"output_dir={out}", "training.log_with=none", *overrides],
                        SECTIONS))
    return json.loads((out / "summary.json").read_text())


def precision_recall(out: Path, flipped: set[str]) -> dict:
    issues = pd.read_csv(out / "label_issues.csv", dtype={"id": str})
    removed = set(issues.loc[issues["removed"], "id"])
    hits = len(removed & flipped)
    return {"removed": len(removed), "precision": hits / max(1, len(removed)), "recall": hits / len(flipped)}


def test_macro_f1(dataset: Path, out: Path, seed: int, epochs: int | None) -> float:
    if not (out / "probs" / "test.parquet").is_file():
        overrides = [f"dataset={dataset}", f"output_dir={out}", f"seed={seed}", "training.log_with=none",
                     "predict_splits=[test]"] + ([f"training.epochs={epochs}"] if epochs else [])
        train_expert(load_config("image-tiny", overrides))
    table = ProbabilityTable.load(out / "probs" / "test.parquet")
    return macro_f1(table.labels, table.predictions())


def bench_noise(root: Path, rows: int, noise: float, seeds: list[int], epochs: int | None) -> dict:
    dataset, flipped = demo_dataset(root, rows, noise)
    out = root / "denoise"
    summary, seconds = timed(run_denoise, "denoise-tiny", dataset, out)
    result = {"noise": noise, "flips": len(flipped), "labelled_rows": summary["labelled_rows"],
              "ranked_rows": summary["ranked_rows"], "oof_macro_f1": summary["oof_macro_f1"],
              "denoise_seconds": seconds, "cuts": {}}
    for rank_by, of in RANKINGS:
        summary, seconds = timed(run_denoise, "denoise-tiny", dataset, out,
                                 [f"denoise.rank_by={rank_by}", f"denoise.cut.of={of}"])
        result["cuts"][f"{rank_by}/{of}"] = {**precision_recall(out, flipped), "flagged": summary["flagged"],
                                             "rerank_seconds": seconds}
        if rank_by == CLEANED_WITH:  # keep this cut's cleaned dataset (the next rerun replaces DIR/dataset)
            shutil.rmtree(root / f"cleaned-{of}", ignore_errors=True)
            shutil.copytree(out / "dataset", root / f"cleaned-{of}")
    result["expert"] = {"noisy labels": [test_macro_f1(dataset, root / f"expert-noisy-{s}", s, epochs) for s in seeds]}
    for of, name in CUTS.items():
        result["expert"][f"cleaned, {name}"] = [test_macro_f1(root / f"cleaned-{of}", root / f"expert-cleaned-{of}-{s}",
                                                              s, epochs) for s in seeds]
    return result


def tfidf_out_of_fold(dataset: Path, out: Path) -> Path:
    """Out-of-fold probabilities of TF-IDF (word 1-2 + char 2-5 grams) + logistic regression over title and
    description, on mmclf's 4 folds: a stronger text model than text-tiny, ranked through denoise.probabilities."""
    from datasets import load_from_disk
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from mmclf.training.folds import fold_splits

    if out.is_file():
        return out
    data = load_from_disk(str(dataset))
    ids, splits, texts, labels = [], [], [], []
    for split in ("train", "validation"):
        ids += list(data[split]["id"])
        splits += [split] * len(data[split])
        texts += [f"{t} {d}" for t, d in zip(data[split]["title"], data[split]["description"])]
        labels += list(data[split]["label"])
    labels, class_names = np.asarray(labels), data["train"].features["label"].names
    probs = np.zeros((len(labels), len(class_names)), dtype=np.float32)
    for train_rows, held_rows in fold_splits(labels, 4, 42, class_names):
        words = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True)
        fit = [texts[i] for i in train_rows]
        x_train = hstack([words.fit_transform(fit), chars.fit_transform(fit)]).tocsr()
        held = [texts[i] for i in held_rows]
        x_held = hstack([words.transform(held), chars.transform(held)]).tocsr()
        model = LogisticRegression(C=20, max_iter=3000).fit(x_train, labels[train_rows])
        probs[np.ix_(held_rows, model.classes_)] = model.predict_proba(x_held)
    ProbabilityTable(ids, splits, labels, probs, class_names, source="tfidf").save(out)
    return out


def bench_real(root: Path, sample: Path) -> dict:
    dataset = root / "dataset"
    if not (dataset / "summary.json").is_file():
        build_dataset(sample / "X_sample.csv", sample / "Y_sample.csv", sample / "image_train", dataset, seed=0,
                      overwrite=True)
    keys = ("labelled_rows", "ranked_rows", "flagged", "removed_label_issues", "oof_macro_f1", "near_duplicate_sets",
            "cross_split_sets", "conflicting_sets", "outliers", "cleanlab_warnings")
    report = {}
    summary, seconds = timed(run_denoise, "text-tiny", dataset, root / "denoise", ["folds=4"])
    report["text-tiny"] = {**{k: summary[k] for k in keys}, "seconds": seconds,
                           "report": str(root / "denoise" / "report.md")}
    table, seconds = timed(tfidf_out_of_fold, dataset, root / "tfidf" / "oof.parquet")
    summary, _ = timed(run_denoise, "text-tiny", dataset, root / "denoise-tfidf", ["folds=4",
                                                                                   f"denoise.probabilities={table}"])
    report["tfidf"] = {**{k: summary[k] for k in keys}, "seconds": seconds,
                       "report": str(root / "denoise-tfidf" / "report.md")}
    return report


def print_tables(results: list[dict], seeds: list[int]) -> None:
    print("\n| flips | ranking | cut | removed | precision | recall |\n|---|---|---|---:|---:|---:|")
    for r in results:
        for name, cut in r["cuts"].items():
            rank_by, of = name.split("/")
            print(f"| {r['noise']:.0%} ({r['flips']}) | {rank_by} | {CUTS[of]} ({cut['flagged']} flagged) | "
                  f"{cut['removed']} | {cut['precision']:.3f} | {cut['recall']:.3f} |")
    print("\n| flips | image expert trained on | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |")
    print("|---|---|" + "---:|" * (len(seeds) + 1))
    for r in results:
        for arm, scores in r["expert"].items():
            scores = np.array(scores)
            print(f"| {r['noise']:.0%} | {arm} | " + " | ".join(f"{x:.3f}" for x in scores)
                  + f" | {scores.mean():.3f} ± {scores.std():.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/mmclf-denoise-bench")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.05, 0.10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", type=int, default=3000, help="demo catalog train rows")
    parser.add_argument("--epochs", type=int, default=None, help="image expert epochs (default: image-tiny's)")
    parser.add_argument("--real", type=Path, default=None, help="the real sample folder (X_sample.csv, ...)")
    args = parser.parse_args()

    workdir = Path(args.workdir)
    results = []
    for noise in args.noise:
        results.append(bench_noise(workdir / f"noise-{noise:g}", args.rows, noise, args.seeds, args.epochs))
        print(json.dumps(results[-1], indent=2))
    report = {"demo": results}
    if args.real:
        report["real"] = bench_real(workdir / "real", args.real)
        print(json.dumps(report["real"], indent=2))
    (workdir / "results.json").write_text(json.dumps(report, indent=2))
    print_tables(results, args.seeds)


if __name__ == "__main__":
    main()
