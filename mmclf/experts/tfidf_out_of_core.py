"""The TF-IDF expert's out-of-core mode (`model.mode: out_of_core`): a fit whose memory is bounded by a chunk of
rows and the model's size, never by the number of rows.

Features: the same n-grams as the in-memory mode (`mmclf.experts.ngrams`), hashed instead of looked up in a
fitted vocabulary: each block (word, char) has 2**hash_bits buckets; a term's bucket is the low bits of the
CRC-32 of its UTF-8 bytes, its sign the top bit (colliding terms tend to cancel rather than add up). CRC-32 is
fixed by its standard, so a bucket is the same in every process, on every platform, with or without
scikit-learn. A row's value in a bucket is the signed sum of its terms' sublinear tf (1 + log tf) there, times
the bucket's smoothed idf; each block is L2-normalised.

Fitting reads the Arrow dataset a chunk of `chunk_rows` rows at a time: pass 1 counts document frequencies per
bucket (the idf) and the class counts (balanced class weights); then `passes` epochs of scikit-learn's
`SGDClassifier.partial_fit` over chunks of rows drawn in a new seeded order each epoch, with the in-memory
mode's objective (L2 penalty alpha = 1 / (C x rows): the same C means the same regularisation). A seeded
`holdout_fraction` of the rows stays out of the classifier's training: their scores fit the temperature.
"""

from __future__ import annotations

import zlib
from collections import defaultdict

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from mmclf.experts.ngrams import analyse, documents

BLOCKS = ("word", "char")
OUT_OF_CORE_DEFAULTS = {
    "hash_bits": 20,  # per block (word, char): 2**hash_bits buckets
    "chunk_rows": 10000,  # rows analysed and fed to the classifier at a time: the fit's memory bound
    "passes": 5,  # epochs of stochastic gradient descent over the training rows
    "average": True,  # averaged SGD: the weights averaged over the updates (steadier with few passes)
    "holdout_fraction": 0.05,  # rows kept out of the classifier's training to fit the temperature
}
LOSSES = {"linear_svm": "hinge", "logistic": "log_loss"}
HASH_BITS = (8, 24)


def check_out_of_core_config(config: dict) -> None:
    settings = config["out_of_core"]
    if not isinstance(settings, dict):
        raise ValueError(f"model.out_of_core must be a mapping of its keys to values, got {settings!r}")  # noqa: TRY004
    unknown = sorted(set(settings) - set(OUT_OF_CORE_DEFAULTS))
    if unknown:
        raise ValueError(f"model.out_of_core: unknown key(s) {unknown}; its keys are {', '.join(OUT_OF_CORE_DEFAULTS)}")
    bits = settings["hash_bits"]
    if not (isinstance(bits, int) and not isinstance(bits, bool) and HASH_BITS[0] <= bits <= HASH_BITS[1]):
        raise ValueError(f"model.out_of_core.hash_bits must be an integer from {HASH_BITS[0]} to {HASH_BITS[1]} "
                         f"(2**hash_bits buckets per block), got {bits!r}")
    for key in ("chunk_rows", "passes"):
        value = settings[key]
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ValueError(f"model.out_of_core.{key} must be an integer >= 1, got {value!r}")
    if not isinstance(settings["average"], bool):
        raise ValueError(f"model.out_of_core.average must be true or false, got {settings['average']!r}")  # noqa: TRY004
    fraction = settings["holdout_fraction"]
    if not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 <= fraction < 0.5):
        raise ValueError(f"model.out_of_core.holdout_fraction must be a number from 0 to below 0.5, got {fraction!r}")
    if config["mode"] == "out_of_core" and config["tune"]:
        raise ValueError("model.tune: the search runs in model.mode: in_memory only; set model.tune=false "
                         "(model.C and the n-gram ranges apply as given)")


def hashed_counts(pairs, block: str, config: dict) -> sp.csr_matrix:
    """Signed sublinear term counts of the documents in 2**hash_bits buckets (float32 CSR, one entry per
    (row, bucket), explicit zeros where colliding terms cancel)."""
    terms = defaultdict()
    terms.default_factory = terms.__len__  # each distinct term of these rows numbered once, hashed once
    indices, indptr = [], [0]
    for document in pairs:
        indices.extend(map(terms.__getitem__, analyse(document, block, config)))
        indptr.append(len(indices))
    rows = len(indptr) - 1
    counts = sp.csr_matrix((np.ones(len(indices), dtype=np.float32), np.asarray(indices, dtype=np.int64),
                            np.asarray(indptr, dtype=np.int64)), shape=(rows, len(terms)))
    counts.sum_duplicates()
    codes = np.fromiter((zlib.crc32(term.encode("utf-8")) for term in terms), dtype=np.uint32, count=len(terms))
    buckets = (codes & np.uint32((1 << config["out_of_core"]["hash_bits"]) - 1)).astype(np.int64)
    signs = np.where(codes >> np.uint32(31), np.float32(-1), np.float32(1))
    values = (1.0 + np.log(counts.data)) * signs[counts.indices]
    hashed = sp.csr_matrix((values, buckets[counts.indices], counts.indptr),
                           shape=(rows, 1 << config["out_of_core"]["hash_bits"]))
    hashed.sum_duplicates()
    return hashed


def weighted(counts: sp.csr_matrix, idf: np.ndarray) -> sp.csr_matrix:
    """tf x idf, rows L2-normalised, in place of `counts`."""
    counts.data *= idf[counts.indices].astype(np.float32)
    norms = np.sqrt(np.add.reduceat(np.append(counts.data ** 2, 0), counts.indptr[:-1])) if counts.nnz else None
    if norms is not None:
        norms[np.diff(counts.indptr) == 0] = 1.0
        norms[norms == 0] = 1.0
        counts.data /= np.repeat(norms, np.diff(counts.indptr)).astype(np.float32)
    return counts


def hashed_features(titles, descriptions, config: dict, idf: dict) -> sp.csr_matrix:
    """The sparse hashed TF-IDF features [rows, 2 x 2**hash_bits] (word buckets, then char buckets)."""
    pairs = documents(titles, descriptions, config)
    return sp.hstack([weighted(hashed_counts(pairs, block, config), idf[block]) for block in BLOCKS], format="csr")


def class_scores(classifier, x, classes: int) -> np.ndarray:
    """Decision scores [rows, classes] in class-index order; a class the classifier never saw scores below all others."""
    scores = classifier.decision_function(x)
    if scores.ndim == 1:  # binary: one score, the second class against the first
        scores = np.stack([-scores, scores], axis=1) / 2
    full = np.full((x.shape[0], classes), scores.min() - 1.0, dtype=np.float64)
    full[:, classifier.classes_] = scores
    return full


def chunks(rows: np.ndarray, size: int):
    for start in range(0, len(rows), size):
        yield np.sort(rows[start:start + size])  # sorted: reads in storage order


def fit_out_of_core(dataset, config: dict, classes: int) -> dict:
    """Idf, classifier and held-out scores from `dataset` (id, title, description, label), read in chunks.
    Returns {"idf": {block: float64 [buckets]}, "classifier", "held_out_scores", "held_out_labels", "rows"}."""
    from sklearn.linear_model import SGDClassifier

    settings = config["out_of_core"]
    columns = dataset.select_columns(["id", "title", "description", "label"])
    total, size = len(columns), settings["chunk_rows"]
    frequencies = {block: np.zeros(1 << settings["hash_bits"], dtype=np.int64) for block in BLOCKS}
    labels = np.empty(total, dtype=np.int64)
    with tqdm(total=(settings["passes"] + 1) * total, desc="tfidf out-of-core fit", unit="row", leave=False) as bar:
        bar.set_postfix_str("pass 1: document frequencies")
        for start in range(0, total, size):
            chunk = columns[start:start + size]
            labels[start:start + len(chunk["label"])] = chunk["label"]
            if (np.asarray(chunk["label"]) < 0).any():
                row = int(np.flatnonzero(np.asarray(chunk["label"]) < 0)[0])
                raise ValueError(f"the tfidf expert needs a label on every training row; row {start + row} "
                                 f"(id {chunk['id'][row]!r}) has none")
            pairs = documents(chunk["title"], chunk["description"], config)
            for block in BLOCKS:
                frequencies[block] += np.bincount(hashed_counts(pairs, block, config).indices,
                                                  minlength=len(frequencies[block]))
            bar.update(len(pairs))
        idf = {block: np.log((1.0 + total) / (1.0 + df)) + 1.0 for block, df in frequencies.items()}

        rng = np.random.default_rng(config["seed"])
        held_out = rng.random(total) < settings["holdout_fraction"] if config["calibration"] == "temperature" \
            else np.zeros(total, dtype=bool)
        train_rows = np.flatnonzero(~held_out)
        bar.total = total * (1 + settings["passes"]) + held_out.sum() * (1 - settings["passes"])
        seen, counts = np.unique(labels[train_rows], return_counts=True)
        weights = None
        if config["class_weight"] == "balanced":
            weights = {int(c): len(train_rows) / (len(seen) * n) for c, n in zip(seen, counts)}
        classifier = SGDClassifier(loss=LOSSES[config["classifier"]], alpha=1.0 / (config["C"] * len(train_rows)),
                                   class_weight=weights, average=settings["average"], random_state=config["seed"])

        def features(rows):
            chunk = columns[rows]
            return hashed_features(chunk["title"], chunk["description"], config, idf)

        for epoch in range(settings["passes"]):
            bar.set_postfix_str(f"pass {epoch + 2}: {LOSSES[config['classifier']]} epoch {epoch + 1}")
            for rows in chunks(rng.permutation(train_rows), size):
                classifier.partial_fit(features(rows), labels[rows], classes=seen)
                bar.update(len(rows))
        scores = [np.zeros((0, classes))]
        for rows in chunks(np.flatnonzero(held_out), size):
            bar.set_postfix_str("held-out scores")
            scores.append(class_scores(classifier, features(rows), classes))
            bar.update(len(rows))
    return {"idf": idf, "classifier": classifier, "held_out_scores": np.concatenate(scores),
            "held_out_labels": labels[held_out], "rows": len(train_rows)}
