"""Checks on a saved tokenizer that every loader makes: the transformers one and the ONNX one.

Two dangers are not covered by reading the files safely:

* **Strings that become paths.** transformers passes every entry of ``tokenizer_config.json``
  (and of the legacy ``special_tokens_map.json``) to the tokenizer class as a keyword
  argument, and some classes open a string argument as a file (``ConvBertTokenizer`` builds
  ``WordPiece(vocab=...)`` from a ``vocab`` string: a file anywhere, a FIFO, ``/dev/zero``).
  :func:`refuse_path_strings` accepts a string, at any depth, only under keys that hold
  tokens or plain options (:data:`TOKEN_KEYS`, :data:`OPTION_KEYS`, any ``*_token``); any
  other string is refused before transformers sees the file.
* **Panics.** The Rust tokenizers library parses some tokenizers that then panic when they
  encode (a ``TemplateProcessing`` post-processor naming a special token it does not define).
  A panic surfaces as ``pyo3_runtime.PanicException``, a ``BaseException`` that escapes every
  ``except Exception``. :func:`probe_tokenizer` encodes a probe at load time and
  :func:`tokenizer_call` turns a panic on a given input into an :class:`ArtifactError`;
  :func:`check_post_processor` refuses the one such tokenizer known, by its field.

Imports neither torch nor transformers: the ONNX predictor uses it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from tunesmith.errors import ArtifactError
from tunesmith.runs.trust import SafeFolder, parse_json, refuse_custom_code

T = TypeVar("T")

TOKEN_KEYS = frozenset(
    {
        "bos_token",
        "eos_token",
        "unk_token",
        "sep_token",
        "pad_token",
        "cls_token",
        "mask_token",
        "additional_special_tokens",
        "extra_special_tokens",
        "added_tokens_decoder",
    }
)
"""Entries that hold tokens (strings, or added tokens as objects). Any other key ending in
``_token`` holds a token too: transformers 5 collects every string-valued ``*_token`` entry
as a model-specific special token."""

OPTION_KEYS = frozenset(
    {
        # what transformers writes for the tokenizers tunesmith saves (BERT/MiniLM, tiny-text)
        # and for common encoders (RoBERTa, DeBERTa v2/v3, XLM-R, MPNet, DistilBERT, ALBERT, ELECTRA)
        "tokenizer_class",
        "backend",
        "padding_side",
        "truncation_side",
        "truncation_strategy",
        "model_input_names",
        "chat_template",
        "never_split",
        "errors",
        "wordpieces_prefix",
        "strip_accents",
        "vocab_type",
        "special_tokens_pattern",
        "token_type_ids_pattern",
        "processor_class",
        # language codes of multilingual tokenizers (looked up as tokens)
        "src_lang",
        "tgt_lang",
        "language",
        "task",
        # where transformers noted the tokenizer came from; overwritten when loading, never opened
        "name_or_path",
        "_name_or_path",
    }
)
"""Plain options whose value may be (or hold) a string: none is ever opened as a file."""

_MAX_SHOWN = 80


def _string_in(value: Any, where: str) -> tuple[str, str] | None:
    """The first string inside ``value`` (at any depth) and the dotted path to it, or ``None``."""
    if isinstance(value, str):
        return where, value
    if isinstance(value, Mapping):
        for k, v in value.items():
            found = _string_in(v, f"{where}.{k}")
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _string_in(v, f"{where}[{i}]")
            if found is not None:
                return found
    return None


def string_allowed(key: Any) -> bool:
    """Whether entry ``key`` of a tokenizer configuration may hold strings."""
    return isinstance(key, str) and (key in TOKEN_KEYS or key in OPTION_KEYS or key.endswith("_token"))


def refuse_path_strings(config: Mapping[str, Any], *, file: str | os.PathLike[str]) -> None:
    """Refuse a tokenizer configuration with a string where a path could be read.

    A string (or a list or object holding one) is accepted only under :func:`string_allowed`
    keys; ``init_inputs`` (positional arguments of the tokenizer class) must be empty. Every
    refusal is an :class:`ArtifactError` naming ``file`` and the field.
    """
    for key, value in config.items():
        if key == "init_inputs" and value not in (None, [], ()):
            raise ArtifactError(
                "field 'init_inputs' gives positional arguments to the tokenizer class; tunesmith never writes it",
                path=file,
                hint="The folder is damaged or was not written by tunesmith; re-save the model",
            )
        if string_allowed(key):
            continue
        found = _string_in(value, str(key))
        if found is not None:
            where, text = found
            shown = text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."
            raise ArtifactError(
                f"field {where!r} is a string ({shown!r}); in a tokenizer configuration only special tokens "
                "and plain options may be strings (a string elsewhere can be opened as a file)",
                path=file,
                hint="The folder is damaged or was not written by tunesmith; re-save the model",
            )


def check_post_processor(tokenizer_json: Mapping[str, Any], *, path: str | os.PathLike[str]) -> None:
    """Refuse a ``TemplateProcessing`` post-processor whose template names an undefined special token.

    The tokenizers library parses such a file and panics on the first text it encodes; this
    check names the field instead (the load-time probe catches what no check foresaw).
    """
    processor = tokenizer_json.get("post_processor")
    stack: list[tuple[str, Any]] = [("post_processor", processor)]
    while stack:
        where, node = stack.pop()
        if not isinstance(node, Mapping):
            continue
        if node.get("type") == "Sequence" and isinstance(node.get("processors"), list):
            stack.extend((f"{where}.processors[{i}]", p) for i, p in enumerate(node["processors"]))
            continue
        if node.get("type") != "TemplateProcessing":
            continue
        specials = node.get("special_tokens")
        defined = specials if isinstance(specials, Mapping) else {}
        for template in ("single", "pair"):
            pieces = node.get(template)
            for piece in pieces if isinstance(pieces, list) else []:
                special = piece.get("SpecialToken") if isinstance(piece, Mapping) else None
                name = special.get("id") if isinstance(special, Mapping) else None
                if special is not None and name not in defined:
                    shown = repr(name)[:_MAX_SHOWN]
                    raise ArtifactError(
                        f"field '{where}.{template}' uses the special token {shown}, which "
                        f"'{where}.special_tokens' does not define",
                        path=path,
                        hint="The folder is damaged or was not written by tunesmith; re-save the model",
                    )


# --- panics of the Rust tokenizers library -------------------------------------------------------

_PASS_THROUGH: tuple[type[BaseException], ...] = (
    KeyboardInterrupt,
    SystemExit,
    GeneratorExit,
    asyncio.CancelledError,
)


def _first_line(exc: BaseException) -> str:
    return ((str(exc).splitlines() or [""])[0][:200]) or type(exc).__name__


@contextlib.contextmanager
def _panics_as_errors(message: str, *, path: str | os.PathLike[str], every_error: bool) -> Iterator[None]:
    """Turn a Rust panic (and, with ``every_error``, any exception) into an :class:`ArtifactError`."""
    try:
        yield
    except _PASS_THROUGH:
        raise
    except ArtifactError:
        raise
    except BaseException as exc:  # pyo3_runtime.PanicException derives from BaseException only
        if isinstance(exc, Exception) and not every_error:
            raise
        raise ArtifactError(
            f"{message}: {type(exc).__name__}: {_first_line(exc)}",
            path=path,
            hint="The folder is damaged or was not written by tunesmith; re-save the model",
        ) from None


PROBE_TEXTS = ["warm up the model with a short sentence.", ""]
"""What a tokenizer encodes once at load time (tunesmith encodes single texts, never pairs)."""


def probe_tokenizer(encode: Callable[[list[str]], Any], *, path: str | os.PathLike[str]) -> None:
    """``encode(PROBE_TEXTS)``; any failure, a Rust panic included, is an :class:`ArtifactError`.

    ``path`` is the tokenizer's file (``.../tokenizer/tokenizer.json``), named by the refusal.
    """
    with _panics_as_errors("the tokenizer cannot encode a short text", path=path, every_error=True):
        encode(list(PROBE_TEXTS))


def tokenizer_call(fn: Callable[[], T], *, path: str | os.PathLike[str]) -> T:
    """``fn()`` (a tokenizer call on user input); a Rust panic becomes an :class:`ArtifactError`.

    Ordinary exceptions pass unchanged; only what ``except Exception`` would miss is caught,
    so a request, a batch or the server's batch loop survives an input the tokenizer panics on.
    ``path`` is the tokenizer's file, named by the error.
    """
    with _panics_as_errors("the tokenizer failed on this input", path=path, every_error=False):
        return fn()
    raise AssertionError("unreachable")  # pragma: no cover - the context manager re-raises


# --- a saved tokenizer's files --------------------------------------------------------------------

TOKENIZER_FILES_HINT = "The folder is damaged or was not written by tunesmith; re-save the model"


def check_token_configs(folder: SafeFolder, rel: str = "tokenizer") -> dict[str, Any]:
    """Refuse ``tokenizer_config.json`` or ``special_tokens_map.json`` under ``rel`` that name code or files.

    Both may not name custom code or other files, at any depth (:func:`refuse_custom_code`),
    and may hold strings only as tokens or plain options (:func:`refuse_path_strings`).
    Returns the parsed ``tokenizer_config.json`` (``{}`` when absent). Used by every loader of a
    saved tokenizer, the PyTorch and the ONNX one alike.
    """
    config: dict[str, Any] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        sub = f"{rel}/{name}"
        if folder.has(sub):
            data = folder.read_json(sub)
            refuse_custom_code(data, file=folder.root / sub)
            refuse_path_strings(data, file=folder.root / sub)
            if name == "tokenizer_config.json":
                config = data
    return config


def read_tokenizer_json(folder: SafeFolder, rel: str = "tokenizer/tokenizer.json") -> Any:
    """``tokenizer.json`` parsed by the tokenizers library (size-capped, inside the folder) or a refusal.

    The text is parsed from memory, so no path in it is opened; a post-processor that would
    panic is refused by its field (:func:`check_post_processor`).
    """
    from tokenizers import Tokenizer

    path = folder.root / rel
    data = folder.read_bytes(rel)
    # A file that is not JSON at all is reported with its line and column, as every JSON file is.
    parsed = parse_json(data, path=path, shown=rel)
    if not isinstance(parsed, dict):
        raise ArtifactError(f"{rel} must hold a JSON object", path=path)
    check_post_processor(parsed, path=path)
    try:
        return Tokenizer.from_str(data.decode("utf-8"))
    except Exception as exc:  # the Rust library raises a plain Exception for any malformed field
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise ArtifactError(
            f"{rel} is not a tokenizer the tokenizers library can read: {first}",
            path=path,
            hint=TOKENIZER_FILES_HINT,
        ) from None


def check_vocab(tokenizer: Any, vocab_size: int, *, folder: SafeFolder, rel: str = "tokenizer/tokenizer.json") -> None:
    """Refuse a tokenizer whose token ids reach past the encoder's ``vocab_size`` embedding rows."""
    top = max(tokenizer.get_vocab(with_added_tokens=True).values(), default=-1)
    if top >= vocab_size:
        raise ArtifactError(
            f"{rel} holds token id {top} but backbone_config.json field 'vocab_size' is {vocab_size}; the encoder "
            "has no embedding for it",
            path=folder.root / rel,
            hint="The tokenizer and the encoder come from different models; re-save the model",
        )
