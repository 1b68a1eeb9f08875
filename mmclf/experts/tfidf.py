"""Classic text expert: TF-IDF word and character n-grams over the title and description, and a linear
classifier (a linear SVM by default, or a multinomial logistic regression) whose scores are calibrated into
probabilities by temperature scaling. It fits in one call (no gradient loop, no GPU): minutes on a laptop
for the full challenge set, and an ensemble member whose errors differ from a transformer's.

Text: each row's title and description are cleaned (HTML entities decoded, tags stripped, whitespace
collapsed), lower-cased and, by default, stripped of accents. Two vocabularies are fitted by
scikit-learn's `TfidfVectorizer` on the training rows: word n-grams (tokens of 2+ word characters) and
`char_wb` n-grams (character n-grams inside word boundaries, padded with a space), each pruned by
`min_df` / `max_df` / `max_features`. A row's term counts are its title's counts times `title_weight`
plus its description's counts; tf is sublinear (1 + log tf), multiplied by the smoothed idf, and each
block (word, char) is L2-normalised. The blocks side by side, sparse throughout, feed the classifier.

Probabilities: softmax(scores / T), with one temperature T fitted to the log-loss of out-of-fold scores
(inner stratified folds of the training rows) and folded into the coefficients. With `tune`, a small grid
(C, class weights, n-gram ranges) is searched by inner cross-validated macro-F1 before the final fit; the
winner's out-of-fold scores fit the temperature.

Saved without pickle, in a form that does not depend on the scikit-learn version: the vocabularies and
idf weights in `vocabulary.parquet` (block, term, idf; one row per feature, in feature order), the
coefficients and intercepts in `model.safetensors`. The n-gram analysis and the tf-idf weighting are
this module's own code (the same at fit and at prediction), so a folder loads and predicts identically
whatever scikit-learn is installed; scikit-learn is needed only to fit.
"""

from __future__ import annotations

from functools import partial
from itertools import product
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from mmclf.experts import EXPERT_FILE
from mmclf.experts.base import Expert
from mmclf.experts.ngrams import analyse, documents, normalise  # noqa: F401 (normalise: part of this module's API)
from mmclf.experts.tfidf_out_of_core import (
    BLOCKS,
    OUT_OF_CORE_DEFAULTS,
    check_out_of_core_config,
    class_scores,
    fit_out_of_core,
    hashed_features,
)
from mmclf.scoring import macro_f1

VOCABULARY_FILE = "vocabulary.parquet"
WEIGHTS_FILE = "model.safetensors"

CONFIG_DEFAULTS = {
    "mode": "in_memory",  # in_memory: vocabularies + LinearSVC on the whole matrix | out_of_core: hashed, in chunks
    "word_ngrams": [1, 2],  # word n-gram lengths, smallest and largest
    "char_ngrams": [2, 5],  # character n-gram lengths inside word boundaries (char_wb)
    "min_df": 2,  # a term must occur in at least this many training rows
    "max_df": 1.0,  # ... and in at most this fraction of them
    "max_features": 500000,  # per block: the most frequent terms kept (null: all)
    "title_weight": 2,  # the title's term counts count this many times (an integer >= 1)
    "strip_accents": True,
    "classifier": "linear_svm",  # linear_svm (squared hinge, one-vs-rest) | logistic (multinomial)
    "C": 0.5,  # inverse L2 regularisation strength of the classifier
    "class_weight": "balanced",  # null | balanced (weights inversely proportional to class frequencies)
    "max_iter": 1000,
    "tol": 1.0e-4,
    "calibration": "temperature",  # temperature: softmax(scores / T), T fitted on out-of-fold scores | none
    "calibration_folds": 3,  # inner folds whose out-of-fold scores fit the temperature
    "tune": False,  # true: pick the best tune_grid setting by inner cross-validated macro-F1
    "tune_folds": 3,
    "tune_grid": {  # the settings tried (every combination); n-gram ranges share the configured smallest length
        "C": [0.25, 0.5, 1.0],
        "class_weight": [None, "balanced"],
        "word_ngrams": [[1, 2]],
        "char_ngrams": [[2, 4], [2, 5]],
    },
    "seed": 0,  # inner folds and the linear SVM's coordinate order
    "out_of_core": dict(OUT_OF_CORE_DEFAULTS),  # the keys of mode out_of_core (mmclf.experts.tfidf_out_of_core)
}
MODES = ("in_memory", "out_of_core")
CLASSIFIERS = ("linear_svm", "logistic")
CALIBRATIONS = ("temperature", "none")
TUNED_KEYS = ("C", "class_weight", "word_ngrams", "char_ngrams")

def tfidf_matrix(pairs, block: str, config: dict, vocabulary: dict[str, int], idf: np.ndarray) -> sp.csr_matrix:
    """Sublinear tf x idf of the documents over a fixed vocabulary, rows L2-normalised (float32 CSR)."""
    indices, indptr, get = [], [0], vocabulary.get
    for document in pairs:
        found = [j for j in map(get, analyse(document, block, config)) if j is not None]
        indices.extend(found)
        indptr.append(len(indices))
    matrix = sp.csr_matrix((np.ones(len(indices), dtype=np.float32), np.asarray(indices, dtype=np.int64),
                            np.asarray(indptr, dtype=np.int64)), shape=(len(indptr) - 1, len(vocabulary)))
    matrix.sum_duplicates()
    np.log(matrix.data, out=matrix.data)
    matrix.data += 1.0
    matrix = matrix @ sp.diags(idf.astype(np.float32), format="csr")
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1), dtype=np.float32).ravel())
    norms[norms == 0] = 1.0
    return (sp.diags(1.0 / norms, format="csr") @ matrix).tocsr()


def check_tfidf_config(config: dict) -> None:
    for key in ("word_ngrams", "char_ngrams"):
        value = config[key]
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value)
                and 1 <= value[0] <= value[1]):
            raise ValueError(f"model.{key} must be [smallest, largest] n-gram lengths with 1 <= smallest <= largest, "
                             f"got {value!r}")
    weight = config["title_weight"]
    if not (isinstance(weight, int) and not isinstance(weight, bool) and weight >= 1):
        raise ValueError(f"model.title_weight must be an integer >= 1 (how many times the title's terms count), "
                         f"got {weight!r}")
    if config["class_weight"] not in (None, "balanced"):
        raise ValueError(f"model.class_weight must be null or balanced, got {config['class_weight']!r}")
    if not config["C"] > 0:
        raise ValueError(f"model.C must be > 0, got {config['C']!r}")
    for key, allowed in (("mode", MODES), ("classifier", CLASSIFIERS), ("calibration", CALIBRATIONS)):
        if config[key] not in allowed:
            raise ValueError(f"model.{key} must be one of {', '.join(allowed)}, got {config[key]!r}")
    for key in ("calibration_folds", "tune_folds"):
        if not (isinstance(config[key], int) and config[key] >= 2):
            raise ValueError(f"model.{key} must be an integer >= 2, got {config[key]!r}")
    grid = config["tune_grid"]
    unknown = sorted(set(grid) - set(TUNED_KEYS))
    if unknown:
        raise ValueError(f"model.tune_grid: unknown key(s) {unknown}; it may vary {', '.join(TUNED_KEYS)}")
    for key, values in grid.items():
        if not (isinstance(values, list) and values):
            raise ValueError(f"model.tune_grid.{key} must be a non-empty list of values, got {values!r}")
        for value in values:
            check_tfidf_config({**config, key: value, "tune_grid": {}})
        if key.endswith("_ngrams") and any(value[0] != config[key][0] for value in values):
            raise ValueError(f"model.tune_grid.{key}: every range must start at {config[key][0]}, the smallest length "
                             f"of model.{key} (the search selects n-grams by length from one vocabulary), got {values!r}")
    check_out_of_core_config(config)


def ngram_lengths(vocabulary: dict[str, int], block: str) -> np.ndarray:
    """Each term's n-gram length, in feature order: words for the word block, characters for the char block.
    Terms up to length h are exactly the vocabulary a range [low, h] would give (while max_features does not
    bind), so one vocabulary serves every range the search tries."""
    terms = sorted(vocabulary, key=vocabulary.get)
    return np.array([t.count(" ") + 1 if block == "word" else len(t) for t in terms], dtype=np.int64)


def make_classifier(config: dict):
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    if config["classifier"] == "logistic":
        return LogisticRegression(C=config["C"], class_weight=config["class_weight"], max_iter=config["max_iter"],
                                  tol=config["tol"])
    return LinearSVC(C=config["C"], class_weight=config["class_weight"], max_iter=config["max_iter"], tol=config["tol"],
                     random_state=config["seed"])


def out_of_fold_scores(x, labels: np.ndarray, classes: int, config: dict, folds: int) -> np.ndarray:
    """Each training row's decision scores from a classifier fitted without it (stratified folds, config's seed;
    a class rarer than `folds` is missing from some folds' fits and scores lowest on their held-out rows)."""
    from sklearn.model_selection import StratifiedKFold

    scores = np.zeros((len(labels), classes))
    if len(labels) < folds:
        raise ValueError(f"tfidf expert: {folds} inner folds need at least {folds} training rows, got {len(labels)}")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config["seed"])
    for train_rows, held_out in splitter.split(np.zeros(len(labels)), labels):
        classifier = make_classifier(config).fit(x[train_rows], labels[train_rows])
        scores[held_out] = class_scores(classifier, x[held_out], classes)
    return scores


def settings_of(grid: dict, config: dict):
    """Every combination of the grid's values, the other tuned keys at the configured values."""
    keys = [k for k in TUNED_KEYS if k in grid]
    for values in product(*(grid[k] for k in keys)):
        yield {**{k: config[k] for k in TUNED_KEYS}, **dict(zip(keys, values))}


def search(features, labels: np.ndarray, classes: int, config: dict):
    """The grid setting with the best inner cross-validated macro-F1 (ties: the first in grid order).
    Returns (best setting, its out-of-fold scores, one record per setting)."""
    results, best, best_scores = [], None, None
    for setting in settings_of(config["tune_grid"], config):
        scores = out_of_fold_scores(features(setting), labels, classes, {**config, **setting}, config["tune_folds"])
        score = macro_f1(labels, scores.argmax(axis=1))
        results.append({**setting, "cv_macro_f1": score})
        tqdm.write(f"tfidf search: {setting} cv macro-F1 {score:.4f}")
        if best is None or score > best[1]:
            best, best_scores = (setting, score), scores
    return best[0], best_scores, results


def log_loss(scores: np.ndarray, labels: np.ndarray) -> float:
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def fit_temperature(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """The factor 1/T minimising the log-loss of softmax(scores / T) on out-of-fold scores; with the
    log-losses at factor 1 and at the fitted factor. Folded into the coefficients, it changes no argmax."""
    from scipy.optimize import minimize_scalar

    found = minimize_scalar(lambda u: log_loss(scores * np.exp(u), labels), bounds=(-5.0, 8.0), method="bounded")
    scale = float(np.exp(found.x))
    return scale, log_loss(scores, labels), log_loss(scores * scale, labels)


class TfidfExpert(Expert):
    kind = "tfidf"
    task = "text-classification"
    required_columns = ("id", "title", "description", "label")
    config_defaults = CONFIG_DEFAULTS
    trains_with_loop = False

    def __init__(self, config: dict, class_names: list[str], metadata: dict | None = None,
                 vocabularies: dict | None = None, idf: dict | None = None,
                 coef: np.ndarray | None = None, intercept: np.ndarray | None = None):
        super().__init__(None, config, class_names, metadata)
        if isinstance(self.config["out_of_core"], dict):  # a partial section keeps the other keys' defaults
            self.config["out_of_core"] = {**OUT_OF_CORE_DEFAULTS, **self.config["out_of_core"]}
        check_tfidf_config(self.config)
        self.vocabularies = vocabularies  # block -> {term: feature index within the block}; None when hashed
        self.idf = idf  # block -> float64 [terms], or [2**hash_bits buckets] when hashed
        self.coef, self.intercept = coef, intercept  # float32 [classes, features], [classes]
        self._coef_by_feature = None  # coef transposed, contiguous: built at the first prediction

    @classmethod
    def build(cls, config: dict, class_names: list[str], train_dataset=None) -> TfidfExpert:
        return cls(config, class_names)

    @property
    def fitted(self) -> bool:
        return self.coef is not None

    # --- fitting ----------------------------------------------------------------------------------

    def fit(self, train_dataset, eval_dataset=None) -> None:
        """Vocabularies, idf, the tuned settings (with `tune`), the classifier and its temperature from the
        training rows (eval_dataset is not used). In mode out_of_core: hashed features and a classifier fitted
        in passes over chunks of rows (`mmclf.experts.tfidf_out_of_core`)."""
        from sklearn.preprocessing import normalize

        self._coef_by_feature = None
        if self.config["mode"] == "out_of_core":
            return self._fit_out_of_core(train_dataset)
        pairs = documents(train_dataset["title"], train_dataset["description"], self.config)
        labels = np.asarray(train_dataset["label"])
        if (labels < 0).any():
            row = int(np.flatnonzero(labels < 0)[0])
            raise ValueError(f"the tfidf expert needs a label on every training row; row {row} "
                             f"(id {train_dataset[row]['id']!r}) has none")
        config = self.config
        grid = config["tune_grid"] if config["tune"] else {}
        widest = {block: [config[f"{block}_ngrams"][0], max(r[1] for r in [config[f"{block}_ngrams"], *grid.get(f"{block}_ngrams", [])])]
                  for block in BLOCKS}
        with tqdm(total=len(BLOCKS) + 2, desc="tfidf fit", leave=False) as bar:
            self.vocabularies, self.idf, counts = {}, {}, {}
            for block in BLOCKS:
                bar.set_postfix_str(f"{block} n-grams of {len(pairs):,} rows")
                counts[block] = self._fit_block(pairs, block, {**config, f"{block}_ngrams": widest[block]})
                bar.update(1)
            lengths = {block: ngram_lengths(self.vocabularies[block], block) for block in BLOCKS}

            def features(setting: dict) -> sp.csr_matrix:
                return sp.hstack([normalize(counts[b][:, lengths[b] <= setting[f"{b}_ngrams"][1]]) for b in BLOCKS],
                                 format="csr")

            scores = None
            if grid:
                bar.set_postfix_str(f"search over {len(list(settings_of(grid, config)))} settings")
                best, scores, results = search(features, labels, len(self.class_names), config)
                config.update(best)
                self.metadata["tuning"] = {"folds": config["tune_folds"], "chosen": best, "settings": results}
            bar.update(1)
            x = features(config)
            for block in BLOCKS:  # keep the chosen ranges' terms (the same indices order, renumbered)
                keep = lengths[block] <= config[f"{block}_ngrams"][1]
                terms = sorted(self.vocabularies[block], key=self.vocabularies[block].get)
                self.vocabularies[block] = {t: j for j, t in enumerate(t for t, k in zip(terms, keep) if k)}
                self.idf[block] = self.idf[block][keep]
            bar.set_postfix_str(f"{config['classifier']}, {x.shape[0]:,} rows x {x.shape[1]:,} features")
            if config["calibration"] == "temperature" and scores is None:
                scores = out_of_fold_scores(x, labels, len(self.class_names), config, config["calibration_folds"])
            self.coef, self.intercept = self._class_rows(make_classifier(config).fit(x, labels))
            if scores is not None:
                self._calibrate(scores, labels)
            bar.update(1)

    def _fit_out_of_core(self, train_dataset) -> None:
        fitted = fit_out_of_core(train_dataset, self.config, len(self.class_names))
        self.vocabularies, self.idf = None, fitted["idf"]
        self.coef, self.intercept = self._class_rows(fitted["classifier"])
        self.metadata["out_of_core"] = {"training_rows": fitted["rows"], "held_out_rows": len(fitted["held_out_labels"])}
        self._calibrate(fitted["held_out_scores"], fitted["held_out_labels"], "held_out")

    def _calibrate(self, scores: np.ndarray, labels: np.ndarray, where: str = "oof") -> None:
        """Fold the temperature fitted on these scores into the coefficients (no rows: left uncalibrated)."""
        if self.config["calibration"] != "temperature" or not len(labels):
            return
        scale, before, after = fit_temperature(scores, labels)
        self.coef *= scale
        self.intercept *= scale
        self.metadata["calibration"] = {"temperature": 1.0 / scale, f"{where}_log_loss_uncalibrated": before,
                                        f"{where}_log_loss": after}

    def _fit_block(self, pairs, block: str, config: dict) -> sp.csr_matrix:
        """Fit one block's vocabulary and idf; return its sublinear tf x idf rows, not yet normalised."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(analyzer=partial(analyse, block=block, config=config), min_df=config["min_df"],
                                     max_df=config["max_df"], max_features=config["max_features"], sublinear_tf=True,
                                     norm=None, dtype=np.float32)
        try:
            matrix = vectorizer.fit_transform(pairs)
        except ValueError as error:  # e.g. min_df above every term's frequency
            raise ValueError(f"tfidf expert, {block} n-grams: {error}") from None
        self.vocabularies[block] = {term: int(j) for term, j in vectorizer.vocabulary_.items()}
        self.idf[block] = vectorizer.idf_.astype(np.float64)
        return matrix.tocsr()

    def _class_rows(self, classifier) -> tuple[np.ndarray, np.ndarray]:
        """Coefficients and intercepts with one row per class of `class_names` (classes absent from the
        training rows get -inf intercepts: probability 0)."""
        coef = np.zeros((len(self.class_names), self.feature_count), dtype=np.float32)
        intercept = np.full(len(self.class_names), -np.inf, dtype=np.float32)
        seen = classifier.classes_
        if len(seen) == 2:  # a binary logistic regression keeps one row: the second class against the first
            rows, bias = np.concatenate([-classifier.coef_, classifier.coef_]) / 2, np.array([-1, 1]) * classifier.intercept_ / 2
        else:
            rows, bias = classifier.coef_, classifier.intercept_
        coef[seen], intercept[seen] = rows, bias
        return coef, intercept

    @property
    def feature_count(self) -> int:
        return sum(len(v) for v in (self.vocabularies or self.idf).values())

    # --- saving and loading -----------------------------------------------------------------------

    def save_model(self, directory) -> None:
        """Nothing to write before `fit` (mmclf_expert.json alone describes an unfitted expert)."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        from safetensors.numpy import save_file

        if not self.fitted:
            return
        if self.vocabularies is None:  # hashed: the idf of every bucket beside the weights, nothing else
            save_file({"coef": self.coef, "intercept": self.intercept, **{f"idf_{b}": self.idf[b] for b in BLOCKS}},
                      str(Path(directory) / WEIGHTS_FILE))
            return
        terms = {block: sorted(vocabulary, key=vocabulary.get) for block, vocabulary in self.vocabularies.items()}
        table = pa.table({"block": pa.array([b for b in BLOCKS for _ in terms[b]], type=pa.dictionary(pa.int8(), pa.string())),
                          "term": pa.array([t for b in BLOCKS for t in terms[b]], type=pa.string()),
                          "idf": pa.array(np.concatenate([self.idf[b] for b in BLOCKS]), type=pa.float64())})
        pq.write_table(table, Path(directory) / VOCABULARY_FILE)
        save_file({"coef": self.coef, "intercept": self.intercept}, str(Path(directory) / WEIGHTS_FILE))

    @classmethod
    def load_model(cls, directory, config, class_names, metadata) -> TfidfExpert:
        import pyarrow.parquet as pq
        from safetensors.numpy import load_file

        directory = Path(directory)
        if config.get("mode") == "out_of_core":
            return cls._load_hashed(directory, config, class_names, metadata)
        if not (directory / VOCABULARY_FILE).is_file():
            return cls(config, class_names, metadata)
        if not (directory / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{directory} has {VOCABULARY_FILE} but no {WEIGHTS_FILE}")
        table = pq.read_table(directory / VOCABULARY_FILE).to_pydict()
        vocabularies, idf = {}, {}
        blocks, terms, weights = np.asarray(table["block"], dtype=object), table["term"], np.asarray(table["idf"])
        for block in BLOCKS:
            rows = np.flatnonzero(blocks == block)
            vocabularies[block] = {terms[r]: j for j, r in enumerate(rows)}
            idf[block] = weights[rows]
        tensors = load_file(str(directory / WEIGHTS_FILE))
        expert = cls(config, class_names, metadata, vocabularies, idf, tensors["coef"], tensors["intercept"])
        expert.check_shapes(directory, VOCABULARY_FILE)
        return expert

    @classmethod
    def _load_hashed(cls, directory: Path, config, class_names, metadata) -> TfidfExpert:
        from safetensors.numpy import load_file

        if not (directory / WEIGHTS_FILE).is_file():
            return cls(config, class_names, metadata)
        tensors = load_file(str(directory / WEIGHTS_FILE))
        missing = sorted({"coef", "intercept", *(f"idf_{b}" for b in BLOCKS)} - set(tensors))
        if missing:
            raise ValueError(f"{directory / WEIGHTS_FILE} lacks the tensor(s) {missing} of a hashed (out_of_core) "
                             f"tfidf expert")
        expert = cls(config, class_names, metadata, None, {b: tensors[f"idf_{b}"] for b in BLOCKS}, tensors["coef"],
                     tensors["intercept"])
        buckets = 1 << expert.config["out_of_core"]["hash_bits"]
        if any(len(expert.idf[b]) != buckets for b in BLOCKS):
            raise ValueError(f"{directory / WEIGHTS_FILE}: idf of {[len(expert.idf[b]) for b in BLOCKS]} buckets, "
                             f"where model.out_of_core.hash_bits in {EXPERT_FILE} gives {buckets} per block")
        expert.check_shapes(directory, EXPERT_FILE)
        return expert

    def check_shapes(self, directory, features_from: str) -> None:
        features = self.feature_count
        if self.coef.shape != (len(self.class_names), features) or self.intercept.shape != (len(self.class_names),):
            raise ValueError(f"{directory}: {WEIGHTS_FILE} holds coefficients of shape {self.coef.shape} for "
                             f"{len(self.class_names)} classes and {features} features in {features_from}")

    # --- inference --------------------------------------------------------------------------------

    def features(self, titles, descriptions) -> sp.csr_matrix:
        """The sparse TF-IDF features [rows, word terms + char terms] of (title, description) pairs
        ([rows, 2 x 2**hash_bits] when hashed)."""
        if self.vocabularies is None:
            return hashed_features(titles, descriptions, self.config, self.idf)
        pairs = documents(titles, descriptions, self.config)
        return sp.hstack([tfidf_matrix(pairs, block, self.config, self.vocabularies[block], self.idf[block])
                          for block in BLOCKS], format="csr")

    def predict_batch(self, batch: dict) -> np.ndarray:
        if not self.fitted:
            raise ValueError("the tfidf expert is not fitted: train it (`mmclf train --config text-tfidf`) or load a "
                             f"folder that holds {VOCABULARY_FILE} and {WEIGHTS_FILE}")
        if self._coef_by_feature is None:  # a sparse x dense product reads the dense side row by row
            self._coef_by_feature = np.ascontiguousarray(self.coef.T)
        logits = self.features(batch["title"], batch["description"]) @ self._coef_by_feature + self.intercept
        logits = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)

    def features_batch(self, batch: dict) -> np.ndarray:
        raise ValueError("the tfidf expert has no dense pooled features: feature-level fusion needs network experts; "
                         "use it in decision-level fusion")

    @property
    def device(self):
        import torch

        return torch.device("cpu")

    def to(self, device) -> TfidfExpert:
        """Sparse matrix products run on the CPU wherever the other experts are."""
        return self
