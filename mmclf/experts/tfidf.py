"""Classic text expert: TF-IDF word and character n-grams over the title and description, and a multinomial
logistic regression. It fits in one call (no gradient loop, no GPU): minutes on a laptop for the full
challenge set, and an ensemble member whose errors differ from a transformer's.

Text: each row's title and description are cleaned (HTML entities decoded, tags stripped, whitespace
collapsed), lower-cased and, by default, stripped of accents. Two vocabularies are fitted by
scikit-learn's `TfidfVectorizer` on the training rows: word n-grams (tokens of 2+ word characters) and
`char_wb` n-grams (character n-grams inside word boundaries, padded with a space), each pruned by
`min_df` / `max_df` / `max_features`. A row's term counts are its title's counts times `title_weight`
plus its description's counts; tf is sublinear (1 + log tf), multiplied by the smoothed idf, and each
block (word, char) is L2-normalised. The blocks side by side, sparse throughout, feed the classifier.

Saved without pickle, in a form that does not depend on the scikit-learn version: the vocabularies and
idf weights in `vocabulary.parquet` (block, term, idf; one row per feature, in feature order), the
coefficients and intercepts in `model.safetensors`. The n-gram analysis and the tf-idf weighting are
this module's own code (the same at fit and at prediction), so a folder loads and predicts identically
whatever scikit-learn is installed; scikit-learn is needed only to fit.
"""

from __future__ import annotations

import re
import unicodedata
from functools import partial
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from mmclf.data.rows import clean_text
from mmclf.experts.base import Expert

VOCABULARY_FILE = "vocabulary.parquet"
WEIGHTS_FILE = "model.safetensors"
BLOCKS = ("word", "char")

CONFIG_DEFAULTS = {
    "word_ngrams": [1, 2],  # word n-gram lengths, smallest and largest
    "char_ngrams": [2, 5],  # character n-gram lengths inside word boundaries (char_wb)
    "min_df": 2,  # a term must occur in at least this many training rows
    "max_df": 1.0,  # ... and in at most this fraction of them
    "max_features": 500000,  # per block: the most frequent terms kept (null: all)
    "title_weight": 2,  # the title's term counts count this many times (an integer >= 1)
    "strip_accents": True,
    "C": 20.0,  # inverse L2 regularisation strength of the logistic regression
    "class_weight": None,  # null | balanced (weights inversely proportional to class frequencies)
    "max_iter": 1000,
    "tol": 1.0e-4,
}

_WORD = re.compile(r"(?u)\b\w\w+\b")
_SPACE = re.compile(r"\s\s+")


def normalise(text: str | None, strip_accents: bool) -> str:
    """Cleaned (HTML decoded, tags stripped, whitespace collapsed), lower-cased, optionally without accents."""
    text = clean_text(text or "").lower()
    if strip_accents and not text.isascii():
        text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return text


def documents(titles, descriptions, config: dict) -> list[tuple[str, str]]:
    """Normalised (title, description) pairs, the documents the n-grams are taken from."""
    return [(normalise(title, config["strip_accents"]), normalise(description, config["strip_accents"]))
            for title, description in zip(titles, descriptions)]


def word_ngrams(text: str, low: int, high: int) -> list[str]:
    tokens = _WORD.findall(text)
    if low == high == 1:
        return tokens
    grams = list(tokens) if low == 1 else []
    for n in range(max(low, 2), high + 1):
        grams += [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return grams


def char_wb_ngrams(text: str, low: int, high: int) -> list[str]:
    """Character n-grams inside word boundaries, each word padded with a space (scikit-learn's char_wb)."""
    grams = []
    for word in _SPACE.sub(" ", text).split():
        padded = f" {word} "
        length = len(padded)
        for n in range(low, high + 1):
            if n >= length:  # a short word counts once, whole
                grams.append(padded)
                break
            grams += [padded[i:i + n] for i in range(length - n + 1)]
    return grams


def analyse(document: tuple[str, str], block: str, config: dict) -> list[str]:
    """The n-grams of one normalised (title, description) pair: the title's repeated `title_weight` times."""
    title, description = document
    low, high = config[f"{block}_ngrams"]
    grams = word_ngrams if block == "word" else char_wb_ngrams
    return grams(title, low, high) * int(config["title_weight"]) + grams(description, low, high)


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
        check_tfidf_config(self.config)
        self.vocabularies = vocabularies  # block -> {term: feature index within the block}
        self.idf = idf  # block -> float64 [terms]
        self.coef, self.intercept = coef, intercept  # float32 [classes, features], [classes]

    @classmethod
    def build(cls, config: dict, class_names: list[str], train_dataset=None) -> TfidfExpert:
        return cls(config, class_names)

    @property
    def fitted(self) -> bool:
        return self.coef is not None

    # --- fitting ----------------------------------------------------------------------------------

    def fit(self, train_dataset, eval_dataset=None) -> None:
        """Vocabularies, idf and the logistic regression from the training rows (eval_dataset is not used)."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        pairs = documents(train_dataset["title"], train_dataset["description"], self.config)
        labels = np.asarray(train_dataset["label"])
        if (labels < 0).any():
            row = int(np.flatnonzero(labels < 0)[0])
            raise ValueError(f"the tfidf expert needs a label on every training row; row {row} "
                             f"(id {train_dataset[row]['id']!r}) has none")
        config, blocks = self.config, []
        self.vocabularies, self.idf = {}, {}
        with tqdm(total=len(BLOCKS) + 1, desc="tfidf fit", leave=False) as bar:
            for block in BLOCKS:
                bar.set_postfix_str(f"{block} n-grams of {len(pairs):,} rows")
                vectorizer = TfidfVectorizer(analyzer=partial(analyse, block=block, config=config),
                                             min_df=config["min_df"], max_df=config["max_df"],
                                             max_features=config["max_features"], sublinear_tf=True, dtype=np.float32)
                try:
                    blocks.append(vectorizer.fit_transform(pairs))
                except ValueError as error:  # e.g. min_df above every term's frequency
                    raise ValueError(f"tfidf expert, {block} n-grams: {error}") from None
                self.vocabularies[block] = {term: int(j) for term, j in vectorizer.vocabulary_.items()}
                self.idf[block] = vectorizer.idf_.astype(np.float64)
                bar.update(1)
            features = sp.hstack(blocks, format="csr")
            bar.set_postfix_str(f"logistic regression, {features.shape[0]:,} rows x {features.shape[1]:,} features")
            classifier = LogisticRegression(C=config["C"], class_weight=config["class_weight"],
                                            max_iter=config["max_iter"], tol=config["tol"])
            classifier.fit(features, labels)
            bar.update(1)
        self.coef, self.intercept = self._class_rows(classifier)

    def _class_rows(self, classifier) -> tuple[np.ndarray, np.ndarray]:
        """Coefficients and intercepts with one row per class of `class_names` (classes absent from the
        training rows get -inf intercepts: probability 0)."""
        features = sum(len(v) for v in self.vocabularies.values())
        coef = np.zeros((len(self.class_names), features), dtype=np.float32)
        intercept = np.full(len(self.class_names), -np.inf, dtype=np.float32)
        seen = classifier.classes_
        if len(seen) == 2:  # a binary logistic regression keeps one row: the second class against the first
            rows, bias = np.concatenate([-classifier.coef_, classifier.coef_]) / 2, np.array([-1, 1]) * classifier.intercept_ / 2
        else:
            rows, bias = classifier.coef_, classifier.intercept_
        coef[seen], intercept[seen] = rows, bias
        return coef, intercept

    # --- saving and loading -----------------------------------------------------------------------

    def save_model(self, directory) -> None:
        """Nothing to write before `fit` (mmclf_expert.json alone describes an unfitted expert)."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        from safetensors.numpy import save_file

        if not self.fitted:
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
        features = sum(len(v) for v in vocabularies.values())
        if expert.coef.shape != (len(class_names), features) or expert.intercept.shape != (len(class_names),):
            raise ValueError(f"{directory}: {WEIGHTS_FILE} holds coefficients of shape {expert.coef.shape} for "
                             f"{len(class_names)} classes and {features} features in {VOCABULARY_FILE}")
        return expert

    # --- inference --------------------------------------------------------------------------------

    def features(self, titles, descriptions) -> sp.csr_matrix:
        """The sparse TF-IDF features [rows, word terms + char terms] of (title, description) pairs."""
        pairs = documents(titles, descriptions, self.config)
        return sp.hstack([tfidf_matrix(pairs, block, self.config, self.vocabularies[block], self.idf[block])
                          for block in BLOCKS], format="csr")

    def predict_batch(self, batch: dict) -> np.ndarray:
        if not self.fitted:
            raise ValueError("the tfidf expert is not fitted: train it (`mmclf train --config text-tfidf`) or load a "
                             f"folder that holds {VOCABULARY_FILE} and {WEIGHTS_FILE}")
        logits = self.features(batch["title"], batch["description"]) @ self.coef.T + self.intercept
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
