"""Text expert: a transformers sequence classifier (CamemBERT in the paper) on the (title, description) pair.

The model comes from a Hub id or a local folder (`camembert-base`, `camembert/camembert-large`, any
encoder), or, offline, is a tiny CamemBERT built from a config with a Unigram tokenizer trained on
the training texts (`model.name: tiny`). Texts are tokenised once (cached `datasets.map`) with
truncation `longest_first` and padded per batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    CamembertConfig,
    CamembertTokenizer,
    DataCollatorWithPadding,
)

from mmclf.train import EXPERT_FILE

TINY_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def train_tiny_tokenizer(texts, vocab_size: int) -> CamembertTokenizer:
    """A CamemBERT-style (SentencePiece Unigram) tokenizer trained on `texts`, built offline."""
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=TINY_SPECIAL_TOKENS, unk_token="<unk>",
                                      show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    vocab = [tuple(piece) for piece in json.loads(tokenizer.to_str())["model"]["vocab"]]
    return CamembertTokenizer(vocab=vocab, additional_special_tokens=[])


class TextExpert:
    kind = "text"
    required_columns = ("id", "title", "description", "label")

    def __init__(self, model, tokenizer, max_length: int):
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        self.collate_fn = DataCollatorWithPadding(tokenizer, return_tensors="pt")

    @property
    def class_names(self) -> list[str]:
        id2label = self.model.config.id2label
        return [id2label[i] for i in range(self.model.config.num_labels)]

    @classmethod
    def build(cls, model_cfg: dict, class_names: list[str], train_dataset) -> TextExpert:
        labels = {"num_labels": len(class_names), "id2label": dict(enumerate(class_names)),
                  "label2id": {name: i for i, name in enumerate(class_names)}}
        max_length = model_cfg["max_length"]
        if model_cfg["name"] == "tiny":
            texts = (f"{t} {d}" for t, d in zip(train_dataset["title"], train_dataset["description"]))
            tokenizer = train_tiny_tokenizer(texts, model_cfg["tiny_vocab_size"])
            config = CamembertConfig(
                vocab_size=len(tokenizer), hidden_size=model_cfg["tiny_hidden_size"],
                num_hidden_layers=model_cfg["tiny_layers"], num_attention_heads=model_cfg["tiny_heads"],
                intermediate_size=model_cfg["tiny_intermediate_size"], max_position_embeddings=max_length + 2,
                hidden_dropout_prob=model_cfg["dropout"], attention_probs_dropout_prob=model_cfg["dropout"],
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, **labels)
            model = AutoModelForSequenceClassification.from_config(config)
        else:
            tokenizer = AutoTokenizer.from_pretrained(model_cfg["name"])
            config = AutoConfig.from_pretrained(model_cfg["name"], **labels)
            for key in ("hidden_dropout_prob", "classifier_dropout"):
                if hasattr(config, key):
                    setattr(config, key, model_cfg["dropout"])
            model = AutoModelForSequenceClassification.from_pretrained(model_cfg["name"], config=config)
        return cls(model, tokenizer, max_length)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        info = {"kind": self.kind, "class_names": self.class_names, "max_length": self.max_length}
        (directory / EXPERT_FILE).write_text(json.dumps(info, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> TextExpert:
        info = json.loads((Path(directory) / EXPERT_FILE).read_text())
        model = AutoModelForSequenceClassification.from_pretrained(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        return cls(model.eval(), tokenizer, info["max_length"])

    def encode(self, dataset, train: bool = False):
        """Tokenised dataset (input_ids, attention_mask, labels) in torch format; train and eval encode alike."""

        def tokenize(titles, descriptions, labels):
            encoded = self.tokenizer(titles, descriptions, truncation="longest_first", max_length=self.max_length)
            encoded["labels"] = labels
            return encoded

        encoded = dataset.map(tokenize, batched=True, input_columns=["title", "description", "label"],
                              remove_columns=dataset.column_names, desc="tokenize")
        return encoded.with_format("torch")

    def lengths(self, encoded) -> list[int]:
        return [len(ids) for ids in encoded.with_format(None)["input_ids"]]

    @torch.no_grad()
    def features(self, batch: dict) -> torch.Tensor:
        """The encoder's first-token ([CLS] / <s>) hidden state."""
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        return self.model.base_model(**inputs).last_hidden_state[:, 0]
