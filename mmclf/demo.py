"""`mmclf demo`: the whole pipeline on the built-in demo catalog, ending in the paper's Table 1.

catalog -> dataset -> three experts: the tiny transformer text expert, the classic TF-IDF text expert
and the tiny image expert (k-fold out-of-fold probabilities + a final model each) -> feature-level
fusion (frozen network experts' features, concatenated) and decision-level fusion (fused runs over
different expert sets and seeds, as the paper mixed configurations) -> majority-vote ensemble of the
fused runs -> `mmclf predict` through the saved pipeline -> evaluation report. Every number is
measured on the held-out test split.

Stages whose outputs already exist in OUT are reused, so an interrupted demo resumes where it
stopped (delete a stage's folder to redo it). Writes OUT/report.json with the keys of TABLE_ROWS
(test macro-F1) and OUT/report.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

TABLE_ROWS = (
    ("text", "Text expert only (tiny transformer)"),
    ("tfidf", "Text expert only (TF-IDF + logistic regression)"),
    ("image", "Image expert only"),
    ("feature_fusion", "Feature-level fusion (concat, tiny text + image)"),
    ("decision_fusion", "Decision-level fusion (tiny text + image, one run)"),
    ("decision_fusion_tfidf", "Decision-level fusion (TF-IDF + image, one run)"),
    ("decision_fusion_all", "Decision-level fusion (all three experts, one run)"),
    ("ensemble", "Ensemble of fused runs (majority vote)"),
)

RECIPES = {"text": "text-tiny", "tfidf": "text-tfidf", "image": "image-tiny"}  # the demo's experts by name

# the fused runs of the ensemble: (experts, head hidden size), cycled with seed + run index; the first
# three give the table's decision-level rows
FUSED_RUNS = (
    (("text", "image"), 0),
    (("tfidf", "image"), 0),
    (("tfidf", "text", "image"), 0),
    (("tfidf", "text", "image"), 6),
    (("tfidf", "image"), 6),
)
FUSED_ROWS = ("decision_fusion", "decision_fusion_tfidf", "decision_fusion_all")


def _train(recipe: str, dataset_dir: Path, run_dir: Path, folds: int, seed: int, overrides: list[str]) -> Path:
    from mmclf.training.config import load_config, read_recipe
    from mmclf.training.train import train_expert

    if (run_dir / "metrics.json").is_file() and (folds < 2 or (run_dir / "probs" / "oof.parquet").is_file()):
        print(f"[demo] reusing {run_dir}")
        return run_dir
    if run_dir.exists():  # an interrupted run: resume it
        overrides = [*overrides, "resume=true"]
    quiet = ["training.log_with=none"] if "log_with" in read_recipe(recipe)["training"] else []
    config = load_config(recipe, [f"dataset={dataset_dir}", f"output_dir={run_dir}", f"folds={folds}",
                                  f"seed={seed}", *quiet, *overrides])
    return train_expert(config)


def run_demo(out_dir, *, rows: int = 3000, seed: int = 0, folds: int = 3, fusion_runs: int = 5,
             label_noise: float = 0.0, text_overrides=(), image_overrides=(), tfidf_overrides=()) -> dict:
    from datasets import load_from_disk

    from mmclf.data.build import build_dataset
    from mmclf.data.demo_catalog import generate_catalog
    from mmclf.evaluation import compute_report, macro_f1, write_report
    from mmclf.fusion.decision import FusionModel, fit_decision_fusion
    from mmclf.fusion.ensemble import majority_vote
    from mmclf.fusion.feature import fuse_expert_features
    from mmclf.pipeline import MultimodalPipeline, write_submission
    from mmclf.probability_tables import ProbabilityTable

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seconds = {}

    def stage(name):
        seconds[name] = round(time.perf_counter() - started - sum(seconds.values()), 1)
        print(f"[demo] {name} done ({seconds[name]:.0f} s)")

    catalog, dataset_dir = out / "catalog", out / "dataset"
    if not (catalog / "Y_test.csv").is_file():
        generate_catalog(catalog, rows=rows, seed=seed, label_noise=label_noise, overwrite=True)
    if not (dataset_dir / "summary.json").is_file():
        build_dataset(catalog / "X_train.csv", catalog / "Y_train.csv", catalog / "image_train", dataset_dir,
                      test_file=catalog / "X_test.csv", test_labels_file=catalog / "Y_test.csv",
                      test_images_dir=catalog / "image_test", seed=seed, overwrite=True)
    dataset = load_from_disk(str(dataset_dir))
    class_names = dataset["train"].features["label"].names
    test_labels = np.asarray(dataset["test"]["label"][:])
    stage("catalog and dataset")

    overrides = {"text": text_overrides, "tfidf": tfidf_overrides, "image": image_overrides}
    runs = {name: _train(recipe, dataset_dir, out / "experts" / name, folds, seed, list(overrides[name]))
            for name, recipe in RECIPES.items()}
    stage("experts")
    oof = {e: ProbabilityTable.load(runs[e] / "probs" / "oof.parquet") for e in runs}
    test = [ProbabilityTable.load(runs[e] / "probs" / "test.parquet") for e in runs]
    scores = {expert: macro_f1(test_labels, table.predictions()) for expert, table in zip(runs, test)}

    # Feature-level fusion: frozen final experts, features extracted once, a head trained on train
    # and selected on validation.
    feature_dir = out / "fusion" / "feature-concat"
    if not (feature_dir / "metrics.json").is_file():
        fuse_expert_features({e: runs[e] / "model" for e in ("text", "image")}, dataset, feature_dir, combine="concat",
                             seed=seed)
    feature_test = ProbabilityTable.load(feature_dir / "probs" / "test.parquet")
    scores["feature_fusion"] = macro_f1(test_labels, feature_test.predictions())
    stage("feature-level fusion")

    # Decision-level fusion: fused runs differing in their experts, seed (fold split, initialisation) and
    # head (one layer / hidden 6 as in the paper), trained on the experts' out-of-fold probabilities.
    fusion_dirs, votes, fused_scores, run_scores = [], [], [], []
    for i in range(fusion_runs):
        experts, hidden_size = FUSED_RUNS[i % len(FUSED_RUNS)]
        fusion_dir = out / "fusion" / f"decision-{i}"
        if (fusion_dir / "fusion.json").is_file():
            model = FusionModel.load(fusion_dir)
        else:
            model = fit_decision_fusion({e: oof[e] for e in experts}, folds=8, hidden_size=hidden_size, seed=seed + i)
            model.save(fusion_dir)
        predicted, _, probs = model.predict(test)
        fusion_dirs.append(fusion_dir)
        votes.append(predicted)
        fused_scores.append(probs)
        run_scores.append(macro_f1(test_labels, predicted))
    for key, score in zip(FUSED_ROWS, run_scores):
        scores[key] = score
    winners, _ = majority_vote(np.stack(votes), len(class_names), tie_break_scores=np.mean(fused_scores, axis=0))
    scores["ensemble"] = macro_f1(test_labels, winners)
    stage("decision-level fusion and ensemble")

    # The pipeline assembled from the saved experts and fusions, used as a user would: predictions for the
    # test split, a report, then the pipeline folder with the test evaluation in its model card.
    pipeline = MultimodalPipeline.from_folders({e: runs[e] / "model" for e in runs}, fusion_dirs,
                                               metadata={"dataset": "mmclf demo catalog"})
    result = pipeline.predict_details(dataset["test"])
    write_submission(out / "predictions.csv", result.ids, result.codes)
    if not np.array_equal(result.winners, winners):
        raise RuntimeError("the pipeline's predictions differ from the in-memory ensemble")
    evaluation = compute_report(test_labels, result.winners, class_names)
    write_report(evaluation, out / "evaluation", title="Demo ensemble on the test split")
    pipeline.metadata["metrics"] = {key: evaluation[key] for key in ("macro_f1", "weighted_f1", "accuracy")}
    pipeline.metadata["metrics"].update(split="test", rows=evaluation["num_rows"])
    pipeline.save_pretrained(out / "pipeline")
    stage("predict and evaluate")

    report = {key: round(scores[key], 4) for key, _ in TABLE_ROWS if key in scores}
    report["details"] = {
        "rows": rows, "seed": seed, "expert_folds": folds, "fusion_runs": fusion_runs, "label_noise": label_noise,
        "test_rows": len(test_labels), "decision_fusion_runs": [round(s, 4) for s in run_scores],
        "decision_fusion_experts": [list(FUSED_RUNS[i % len(FUSED_RUNS)][0]) for i in range(fusion_runs)],
        "seconds": seconds, "total_seconds": round(time.perf_counter() - started, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(table_markdown(report))
    return report


def table_markdown(report: dict) -> str:
    lines = ["| method | test macro-F1 |", "|---|---:|"]
    lines += [f"| {label} | {report[key]:.4f} |" for key, label in TABLE_ROWS if key in report]
    return "\n".join(lines) + "\n"


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out); reruns resume")
    parser.add_argument("--rows", type=int, default=3000, help="training rows of the demo catalog")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=3, help="expert folds for out-of-fold probabilities")
    parser.add_argument("--fusion-runs", type=int, default=5, help="decision-level fused runs in the ensemble")
    parser.add_argument("--label-noise", type=float, default=0.0, help="fraction of training labels flipped")
    parser.add_argument("--text", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the text-tiny recipe")
    parser.add_argument("--image", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the image-tiny recipe")
    parser.add_argument("--tfidf", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the text-tfidf recipe")


def run(args) -> int:
    report = run_demo(args.out, rows=args.rows, seed=args.seed, folds=args.folds, fusion_runs=args.fusion_runs,
                      label_noise=args.label_noise, text_overrides=args.text, image_overrides=args.image,
                      tfidf_overrides=args.tfidf)
    print()
    print(table_markdown(report))
    print(f"report: {Path(args.out) / 'report.json'}; predictions: {Path(args.out) / 'predictions.csv'}; "
          f"{report['details']['total_seconds']:.0f} s in all")
    return 0
