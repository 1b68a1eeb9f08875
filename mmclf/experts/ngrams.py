"""Text into n-grams, the same at fit and at prediction for both modes of the TF-IDF expert: each row's title and
description cleaned (HTML entities decoded, tags stripped, whitespace collapsed), lower-cased and, optionally,
stripped of accents; word n-grams (tokens of 2+ word characters) and `char_wb` n-grams (character n-grams inside
word boundaries, padded with a space); the title's n-grams repeated `title_weight` times."""

from __future__ import annotations

import re
import unicodedata

from mmclf.data.rows import clean_text

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
