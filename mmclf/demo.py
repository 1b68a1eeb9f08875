"""`mmclf demo`: the demo workflow (`mmclf/workflows/demo.yaml`) on the built-in catalog, then the paper's Table 1.

The workflow builds the catalog and dataset, trains three experts with k-fold out-of-fold probabilities (the tiny
transformer text expert, the classic TF-IDF text expert, the tiny image expert), fuses them at feature level and at
decision level (five fused runs over different expert sets and heads), majority-votes the fused runs and predicts
the test split through the saved pipeline. Every number of the table is measured on the held-out test split.
Finished steps are skipped on a rerun (`mmclf.workflow`). Writes OUT/report.json (the keys of TABLE_ROWS) and
OUT/report.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

TABLE_ROWS = (
    ("text", "Text expert only (tiny transformer)"),
    ("tfidf", "Text expert only (TF-IDF + linear SVM)"),
    ("image", "Image expert only"),
    ("feature_fusion", "Feature-level fusion (concat, tiny text + image)"),
    ("decision_fusion", "Decision-level fusion (tiny text + image, one run)"),
    ("decision_fusion_tfidf", "Decision-level fusion (TF-IDF + image, one run)"),
    ("decision_fusion_all", "Decision-level fusion (all three experts, one run)"),
    ("ensemble", "Ensemble of fused runs (majority vote)"),
)
FUSED_ROWS = ("decision_fusion", "decision_fusion_tfidf", "decision_fusion_all")  # fused runs 0, 1, 2


def run_demo(out_dir, *, rows: int = 3000, seed: int = 0, folds: int = 3, label_noise: float = 0.0,
             overrides=(), echo=print) -> dict:
    """Run the demo workflow into `out_dir` (`overrides`: workflow `key=value` items) and return Table 1."""
    from mmclf.workflow import run_workflow

    started = time.perf_counter()
    variables = [f"rows={rows}", f"seed={seed}", f"folds={folds}", f"label_noise={label_noise}"]
    run_workflow("demo", [*variables, *overrides], out=out_dir, echo=echo)
    report = table_one(Path(out_dir))
    report["details"].update(rows=rows, seed=seed, expert_folds=folds, label_noise=label_noise,
                             total_seconds=round(time.perf_counter() - started, 1))
    (Path(out_dir) / "report.json").write_text(json.dumps(report, indent=2))
    (Path(out_dir) / "report.md").write_text(table_markdown(report))
    return report


def table_one(out: Path) -> dict:
    """Test macro-F1 of every row of Table 1, read from the demo workflow's step folders."""
    import pandas as pd

    from mmclf.evaluation import macro_f1
    from mmclf.probability_tables import ProbabilityTable

    def table_score(path: Path) -> float:
        table = ProbabilityTable.load(path)
        return macro_f1(table.labels, table.predictions())

    test = ProbabilityTable.load(out / "text" / "probs" / "test.parquet")
    label_of = dict(zip(test.ids, test.labels))
    index = {code: i for i, code in enumerate(test.class_names)}

    def vote_score(path: Path) -> float:
        frame = pd.read_csv(path, dtype=str)
        frame = frame[frame["split"] == "test"]
        return macro_f1(np.array([label_of[i] for i in frame["id"]]), np.array([index[c] for c in frame["prediction"]]))

    scores = {name: table_score(out / name / "probs" / "test.parquet") for name in ("text", "tfidf", "image")}
    scores["feature_fusion"] = table_score(out / "feature_fusion" / "probs" / "test.parquet")
    fused = sorted((p for p in out.glob("fuse_*") if p.is_dir()), key=lambda p: int(p.name.split("_")[1]))
    run_scores = [vote_score(p / "predictions.csv") for p in fused]
    scores.update(zip(FUSED_ROWS, run_scores))
    scores["ensemble"] = vote_score(out / "ensemble" / "predictions.csv")
    submission = pd.read_csv(out / "predict" / "submission.csv", dtype=str, index_col=0)
    ensemble = pd.read_csv(out / "ensemble" / "predictions.csv", dtype=str)
    if submission.loc[ensemble["id"], "prdtypecode"].tolist() != ensemble["prediction"].tolist():
        raise RuntimeError("the pipeline's predictions differ from the ensemble of its fused runs")
    report = {key: round(scores[key], 4) for key, _ in TABLE_ROWS if key in scores}
    report["details"] = {"test_rows": len(test), "fusion_runs": len(fused),
                         "decision_fusion_runs": [round(s, 4) for s in run_scores],
                         "decision_fusion_experts": [json.loads((p / "fusion.json").read_text())["expert_names"]
                                                     for p in fused]}
    return report


def table_markdown(report: dict) -> str:
    lines = ["| method | test macro-F1 |", "|---|---:|"]
    lines += [f"| {label} | {report[key]:.4f} |" for key, label in TABLE_ROWS if key in report]
    return "\n".join(lines) + "\n"
