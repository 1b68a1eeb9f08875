"""Label-noise removal (`mmclf denoise`): k-fold out-of-fold probabilities ranked by cleanlab (ranking.py),
near-duplicates and outliers from cleanlab's Datalab (datalab.py), the report (report.py), and the stage that
ties them together into a run folder and a cleaned dataset (run.py: `denoise(config) -> Path`)."""

from mmclf.denoise.datalab import cross_split_copies, datalab_issues, find_data_issues
from mmclf.denoise.ranking import LABELLED_SPLITS, Ranking, add_ranking, choose_cut, rank_label_issues
from mmclf.denoise.report import write_report
from mmclf.denoise.run import DENOISE_DEFAULTS, SECTIONS, check_denoise_config, denoise

__all__ = [
    "DENOISE_DEFAULTS",
    "LABELLED_SPLITS",
    "SECTIONS",
    "Ranking",
    "add_ranking",
    "check_denoise_config",
    "choose_cut",
    "cross_split_copies",
    "datalab_issues",
    "denoise",
    "find_data_issues",
    "rank_label_issues",
    "write_report",
]
