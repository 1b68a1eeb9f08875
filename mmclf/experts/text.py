"""Text expert: a transformers sequence classifier (CamemBERT in the paper) on the (title, description) pair.

The model comes from a Hub id or a local folder (`camembert-base`, `camembert/camembert-large`, any BERT-,
RoBERTa- or CamemBERT-style encoder, e.g. a `save_pretrained` folder) with its own tokenizer, special tokens
and token types, and a new classification head (the load report counts loaded / missing / unused tensors), or, offline, is a tiny CamemBERT built from a config with a Unigram tokenizer trained on
the training texts (`model.name: tiny`). Texts are tokenised once per split (cached `datasets.map`) with
truncation `longest_first` and padded per batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    CamembertConfig,
    CamembertTokenizer,
    DataCollatorWithPadding,
)
from transformers.utils import logging as hf_logging

from mmclf.experts.base import Expert

TINY_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]

CONFIG_DEFAULTS = {
    "name": "tiny",  # a Hub id (camembert-base), a local folder, or "tiny": a small encoder built offline
    "max_length": 256,
    "dropout": 0.1,
    "min_loaded": 0.9,  # a pretrained encoder: refuse one whose checkpoint fills under this share of its tensors
    # the "tiny" encoder: a CamemBERT config of this size and a Unigram tokenizer trained on the training texts
    "tiny_vocab_size": 4000,
    "tiny_hidden_size": 64,
    "tiny_layers": 2,
    "tiny_heads": 2,
    "tiny_intermediate_size": 128,
}


def train_tiny_tokenizer(texts, vocab_size: int) -> CamembertTokenizer:
    """A CamemBERT-style (SentencePiece Unigram) tokenizer trained on `texts`, built offline."""
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=TINY_SPECIAL_TOKENS, unk_token="<unk>",
                                      show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    vocab = json.loads(tokenizer.to_str())["model"]["vocab"]
    return CamembertTokenizer(vocab=canonical_vocab(vocab, len(TINY_SPECIAL_TOKENS)), additional_special_tokens=[])


def canonical_vocab(vocab: list, specials: int) -> list[tuple[str, float]]:
    """The trainer's vocab in an order and with scores that depend only on the texts, so two trainings on the same
    texts give the same token ids (and a seeded run reproduces). The Unigram trainer sums in hash-map order (scores
    vary in the last bits) and gives the characters it must add the scores min_score + k * 1e-4 in hash-set order:
    scores are rounded to 6 decimals, those characters get their scores in sorted order, ties sort by piece."""
    head, pieces = vocab[:specials], [(piece, round(score, 6)) for piece, score in vocab[specials:]]
    lowest = min((score for _, score in pieces), default=0.0)

    def added_by_trainer(piece: str, score: float) -> bool:  # one character at lowest + k * 1e-4
        steps = (score - lowest) * 1e4
        return len(piece) == 1 and abs(steps - round(steps)) < 1e-3

    on_grid = [i for i, (piece, score) in enumerate(pieces) if added_by_trainer(piece, score)]
    grid_scores = sorted((pieces[i][1] for i in on_grid), reverse=True)
    for i, piece, score in zip(on_grid, sorted(pieces[i][0] for i in on_grid), grid_scores):
        pieces[i] = (piece, score)
    return [tuple(piece) for piece in head] + sorted(pieces, key=lambda item: (-item[1], item[0]))


def words_prefix(text: str, words: int) -> str:
    """The text up to its `words`-th whitespace-separated word. A word is at least one token, so truncating the
    prefix to `words` tokens or fewer gives what truncating the whole text gives; the tokenizers library's truncation of a pair
    takes time and memory growing with the product of the two lengths (a 20,000-character pair: seconds, GBs)."""
    parts = text.split(maxsplit=words)
    return text if len(parts) <= words else text[:len(text) - len(parts[-1])]


def tokenize(batch: dict, tokenizer, max_length: int) -> dict:
    """Columns title, description (and label) -> input_ids, attention_mask (and labels)."""
    titles = [words_prefix(text, max_length) for text in batch["title"]]
    descriptions = [words_prefix(text, max_length) for text in batch["description"]]
    encoded = dict(tokenizer(titles, descriptions, truncation="longest_first", max_length=max_length))
    if "label" in batch:
        encoded["labels"] = batch["label"]
    return encoded


class TextExpert(Expert):
    kind = "text"
    task = "text-classification"
    required_columns = ("id", "title", "description", "label")
    config_defaults = CONFIG_DEFAULTS

    def __init__(self, model, tokenizer, config: dict, metadata: dict | None = None):
        id2label = model.config.id2label
        super().__init__(model, config, [id2label[i] for i in range(model.config.num_labels)], metadata)
        self.tokenizer = tokenizer
        self.pad = DataCollatorWithPadding(tokenizer, return_tensors="pt")

    @classmethod
    def build(cls, config: dict, class_names: list[str], train_dataset) -> TextExpert:
        config = {**CONFIG_DEFAULTS, **config}
        labels = {"num_labels": len(class_names), "id2label": dict(enumerate(class_names)),
                  "label2id": {name: i for i, name in enumerate(class_names)}}
        max_length = config["max_length"]
        if config["name"] == "tiny":
            texts = (f"{t} {d}" for t, d in zip(train_dataset["title"], train_dataset["description"]))
            tokenizer = train_tiny_tokenizer(texts, config["tiny_vocab_size"])
            model_config = CamembertConfig(
                vocab_size=len(tokenizer), hidden_size=config["tiny_hidden_size"],
                num_hidden_layers=config["tiny_layers"], num_attention_heads=config["tiny_heads"],
                intermediate_size=config["tiny_intermediate_size"], max_position_embeddings=max_length + 2,
                hidden_dropout_prob=config["dropout"], attention_probs_dropout_prob=config["dropout"],
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, **labels)
            model = AutoModelForSequenceClassification.from_config(model_config)
        else:
            tokenizer = AutoTokenizer.from_pretrained(config["name"])
            model_config = AutoConfig.from_pretrained(config["name"], **labels)
            for key in ("hidden_dropout_prob", "classifier_dropout"):
                if hasattr(model_config, key):
                    setattr(model_config, key, config["dropout"])
            model, loading = AutoModelForSequenceClassification.from_pretrained(
                config["name"], config=model_config, ignore_mismatched_sizes=True, output_loading_info=True)
            check_max_length(model, max_length, config["name"])
            return cls(model, tokenizer, config, {"pretrained_load": load_report(model, loading, config)})
        return cls(model, tokenizer, config)

    @property
    def base_model(self) -> str | None:
        name = self.config["name"]
        return None if name == "tiny" or Path(name).is_dir() else name

    def save_model(self, directory) -> None:
        self.model.save_pretrained(directory)
        # tokenize() sets truncation on every call; what the last call left behind (or not, when `datasets` served
        # the encoding from its cache) is not part of the expert, and would make two runs' folders differ
        self.tokenizer.backend_tokenizer.no_truncation()
        self.tokenizer.backend_tokenizer.no_padding()
        self.tokenizer.save_pretrained(directory)

    @classmethod
    def load_model(cls, directory, config, class_names, metadata) -> TextExpert:
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a local load needs no "Loading weights" bar
        try:
            model = AutoModelForSequenceClassification.from_pretrained(directory)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        return cls(model.eval(), reload_tokenizer(directory), config, metadata)

    def encode_batch(self, batch: dict, train: bool) -> dict:
        return tokenize(batch, self.tokenizer, self.config["max_length"])

    def encode(self, dataset, train: bool):
        """Tokenised once (train and evaluation encode alike); cached by `datasets` for datasets on disk."""
        columns = [c for c in ("title", "description", "label") if c in dataset.column_names]
        return dataset.select_columns(columns).map(
            tokenize, batched=True, remove_columns=columns, desc="tokenize",
            fn_kwargs={"tokenizer": self.tokenizer, "max_length": self.config["max_length"]})

    def lengths(self, encoded) -> list[int]:
        return [len(ids) for ids in encoded["input_ids"]]

    def collate_inputs(self, rows: list[dict]) -> dict:
        return dict(self.pad(rows))

    def pooled_features(self, inputs: dict) -> torch.Tensor:
        """The encoder's first-token ([CLS] / <s>) hidden state."""
        return self.model.base_model(**inputs).last_hidden_state[:, 0]

    def head(self) -> nn.Module:
        """BERT-style models classify dropout(pooler output) with one linear layer; RoBERTa-style ones (CamemBERT)
        have a head module that reads the first token of the sequence."""
        if isinstance(self.model.classifier, nn.Linear):
            return nn.Sequential(self.model.dropout, self.model.classifier)
        return nn.Sequential(nn.Unflatten(1, (1, -1)), self.model.classifier)

    def frozen_features(self, inputs: dict) -> torch.Tensor:
        outputs = self.model.base_model(**inputs)
        pooled = getattr(outputs, "pooler_output", None)
        if isinstance(self.model.classifier, nn.Linear) and pooled is not None:
            return pooled
        return outputs.last_hidden_state[:, 0]


def reload_tokenizer(directory):
    """The saved tokenizer, which saves back to the same files. Loading adds settings to its init arguments (how it
    was loaded, the truncation stored in tokenizer.json) that save_pretrained would write into tokenizer_config.json:
    a resumed run's expert folder, and every workflow step that reads it, would change."""
    tokenizer = AutoTokenizer.from_pretrained(directory)
    saved = Path(directory) / "tokenizer_config.json"
    if saved.is_file():
        kept = json.loads(saved.read_text())
        for key in set(tokenizer.init_kwargs) - set(kept):
            del tokenizer.init_kwargs[key]
    return tokenizer


def check_max_length(model, max_length: int, name: str) -> None:
    """Position ids of RoBERTa-style models start after the padding index: they hold 2 fewer tokens."""
    padding_idx = getattr(model.base_model.embeddings, "padding_idx", None)
    limit = model.config.max_position_embeddings - (padding_idx + 1 if padding_idx is not None else 0)
    if max_length > limit:
        raise ValueError(f"model.max_length={max_length} is longer than {name} can read ({limit} tokens)")


def load_report(model, loading: dict, config: dict) -> dict:
    """Counts of the checkpoint's tensors: loaded into the encoder, new (the head, or missing), unused; a checkpoint
    that fills under `min_loaded` of the encoder is refused (e.g. a folder of another architecture)."""
    names = list(model.state_dict())
    mismatched = [item[0] if isinstance(item, (tuple, list)) else item for item in loading.get("mismatched_keys", [])]
    new = set(loading.get("missing_keys", [])) | set(mismatched)
    head = [n for n in names if n.startswith("classifier.")]
    encoder = [n for n in names if not n.startswith("classifier.")]
    missing = [n for n in encoder if n in new]
    loaded = len(encoder) - len(missing)
    summary = (f"pretrained encoder {config['name']}: {loaded} of {len(encoder)} encoder tensors loaded, "
               f"{len(missing)} missing, {len(loading.get('unexpected_keys', []))} unexpected; classifier "
               f"{'new' if all(n in new for n in head) else 'from the checkpoint'} ({len(head)} tensors)")
    if loaded < config["min_loaded"] * len(encoder):
        raise ValueError(f"{summary}: under model.min_loaded={config['min_loaded']} of the encoder would load, "
                         f"refused; missing: {', '.join(missing[:6])}{', ...' if len(missing) > 6 else ''}")
    return {"summary": summary, "loaded": loaded, "encoder_tensors": len(encoder), "missing": len(missing),
            "unexpected": len(loading.get("unexpected_keys", []))}
