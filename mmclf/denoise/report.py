"""The denoise report: report.md, its tables, and the contact sheet of the most suspected rows."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd

from mmclf.denoise.ranking import LABELLED_SPLITS


def draw_contact_sheet(cards: pd.DataFrame, dataset_dict, path: Path, title: str, columns: int = 8) -> Path:
    """A grid of the given rows: thumbnail (or title text without an image), rank, id, given -> suggested code."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = max(1, min(columns, len(cards)))
    grid_rows = max(1, -(-len(cards) // columns))
    width, height = max(2.1 * columns, 6.0), 2.75 * grid_rows + 0.8
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    figure.suptitle(textwrap.fill(title, int(width * 9)), fontsize=11)
    for n in range(grid_rows * columns):
        ax = figure.add_subplot(grid_rows, columns, n + 1)
        ax.set_xticks([])
        ax.set_yticks([])
        if n >= len(cards):
            ax.axis("off")
            continue
        card = cards.iloc[n]
        image = dataset_dict[card["split"]][int(card["position"])].get("image")
        if image is not None:
            ax.imshow(image.convert("RGB"))
            ax.set_xlabel(textwrap.shorten(str(card["title"]), 36, placeholder="…"), fontsize=6.5)
        else:
            ax.set_facecolor("#f2f2f2")
            ax.text(0.5, 0.5, textwrap.fill(str(card["title"])[:150], 22), ha="center", va="center", fontsize=7,
                    transform=ax.transAxes, wrap=True)
        ax.set_title(f"#{card['rank']}  {card['id']} ({card['split']})\n"
                     f"given {card['given_code']} \u2192 {card['suggested_code']} (p {card['p_suggested']:.2f})",
                     fontsize=7.5, color="#b00020")
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.45 / height))  # room for the title
    figure.savefig(path, dpi=90)
    return path


def markdown_table(frame: pd.DataFrame) -> str:
    def cell(value):
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def per_class_counts(rows: pd.DataFrame, class_names: list[str]) -> pd.DataFrame:
    labelled = rows[rows["split"].isin(LABELLED_SPLITS)]
    table = []
    for code in class_names:
        of_class = labelled[labelled["code"] == code]
        flagged = of_class[of_class["flagged"]]
        suggested = flagged["suggested_code"].value_counts()
        removed = int(of_class["removed"].sum())
        table.append({"code": code, "rows": len(of_class), "ranked": int(of_class["judged"].sum()),
                      "flagged": len(flagged), "flagged %": f"{100 * len(flagged) / max(1, of_class['judged'].sum()):.1f}",
                      "removed": removed, "removed %": f"{100 * removed / max(1, len(of_class)):.1f}",
                      "most suggested instead": f"{suggested.index[0]} ({suggested.iloc[0]})" if len(suggested) else ""})
    return pd.DataFrame(table)


def write_report(path: Path, summary: dict, rows: pd.DataFrame, class_names: list[str], data_issues: dict) -> None:
    s = summary
    flagged = rows[rows["flagged"]].sort_values("rank")
    pairs = flagged.groupby(["given_code", "suggested_code"]).size().sort_values(ascending=False).head(10)
    source = (f"probabilities `{s['probabilities']}` ({s['source']})" if s["given_probabilities"]
              else f"{s['expert']} expert, {s['folds']} folds")
    cut_base = "flagged list" if s["cut_of"] == "flagged" else "ranked rows"
    removed_by_split = ", ".join(f"{split} {n}" for split, n in s["removed_by_split"].items())
    not_flagged = f"; {s['removed_unflagged']} of them not flagged" if s["removed_unflagged"] else ""
    sizes = ", ".join(f"{split} {s['rows_before'][split]} \u2192 {n}" for split, n in s["rows_after"].items())
    lines = [
        "# Label-noise report",
        "",
        (f"Dataset `{s['dataset']}`, {source}: out-of-fold macro-F1 {s['oof_macro_f1']:.4f}, accuracy "
         f"{s['oof_accuracy']:.4f} over {s['labelled_rows']} train and validation rows."),
        "",
        (f"`cleanlab.filter.find_label_issues(filter_by='{s['filter_by']}', "
         f"return_indices_ranked_by='{s['rank_by']}')` flagged **{s['flagged']}** of {s['ranked_rows']} ranked rows "
         f"({100 * s['flagged'] / max(1, s['ranked_rows']):.1f} %)."),
    ]
    if s["unjudged_rows"]:
        lines.append(f"{s['unjudged_rows']} rows without an image were not ranked (the {s['expert']} expert sees "
                     "only a blank image for them) and are kept.")
    lines += [
        "",
        (f"Cut: {s['cut_percent']:g} % of the {cut_base} in {', '.join(s['cut_splits'])}: "
         f"**{s['removed_label_issues']}** rows removed ({removed_by_split}{not_flagged})."),
        f"Cleaned dataset `dataset/` (rows): {sizes}.",
        "",
        "## cleanlab warnings",
        "",
        *([f"- {warning}" for warning in s["cleanlab_warnings"]] or ["none"]),
        "",
        "## Top suspected rows",
        "",
        (f"Score: cleanlab's label quality by {s['rank_by']} (0: surely mislabelled, 1: surely right); rank: the "
         "row's place among all ranked rows by that score. Every flagged row is in `label_issues.csv`."),
        "",
        "![contact sheet](contact_sheet.png)",
        "",
        markdown_table(flagged.head(25)[["rank", "id", "split", "given_code", "suggested_code", "score", "p_given",
                                         "p_suggested", "removed", "title"]]),
        "",
        "## Most frequent given \u2192 suggested codes among flagged rows",
        "",
        markdown_table(pd.DataFrame({"given": [g for g, _ in pairs.index], "suggested": [c for _, c in pairs.index],
                                     "rows": pairs.to_numpy()})) if len(pairs) else "none",
        "",
        "## Per class (train + validation)",
        "",
        markdown_table(per_class_counts(rows, class_names)),
        "",
        *data_issues_report(s, data_issues),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def data_issues_report(s: dict, data_issues: dict) -> list[str]:
    lines = ["## Near-duplicates and outliers (cleanlab Datalab)", ""]
    if "skipped" in data_issues:
        return [*lines, f"Not computed: {data_issues['skipped']}."]
    near, outliers = data_issues["near_duplicates"], data_issues["outliers"]
    removal = (f"{s['removed_duplicates']} rows removed as cross-split copies" if s["remove_cross_split_duplicates"]
               else "denoise.datalab.remove_cross_split_duplicates=true would remove their copies in earlier splits")
    by_split = ", ".join(f"{split} {n}" for split, n in outliers["split"].value_counts().items()) or "none"
    lines += [
        (f"Pooled features of fold 0's model over {data_issues['rows']} rows of every split. "
         f"**{s['near_duplicate_sets']}** near-duplicate sets ({len(near)} rows); **{s['cross_split_sets']}** span "
         "splits (a listing trained on and scored again in evaluation inflates scores): "
         f"{removal}; **{s['conflicting_sets']}** sets hold different codes. All in `near_duplicates.csv`."),
        "",
    ]
    if len(near):
        lines += [markdown_table(near[near["set"] < 15][["set", "id", "split", "code", "removed", "title"]]), ""]
    lines.append(f"**{len(outliers)}** outliers ({by_split}), kept; all in `outliers.csv`.")
    if len(outliers):
        lines += ["", markdown_table(outliers.head(15)[["id", "split", "code", "outlier_score", "title"]])]
    return lines
