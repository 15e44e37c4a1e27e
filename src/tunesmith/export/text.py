"""Prediction from a text model folder: the PyTorch model or its ONNX graph, one interface.

:class:`OnnxPredictor` runs ``onnx/model.onnx`` (fp32) or ``model.int8.onnx`` with the saved
tokenizer, no PyTorch needed; :class:`TorchPredictor` runs the model as
:meth:`FineTuner.load <tunesmith.estimators.text.FineTuner.load>` builds it.
:func:`open_text_predictor` is what the registry's ``text`` kind predicts with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.errors import ArtifactError, ConfigError
from tunesmith.export.predictor import ONNX_DIR, ONNX_FILES, Predictor
from tunesmith.export.session import default_threads, onnx_session
from tunesmith.runs.tokenizer_trust import (
    check_token_configs,
    check_vocab,
    probe_tokenizer,
    read_tokenizer_json,
    tokenizer_call,
)
from tunesmith.runs.trust import SafeFolder

SMALL_BATCH_TOKENS = 128
"""Batches of at most this many tokens (rows x padded length) run on a one-thread session."""


def _onnx_tokenizer(safe: SafeFolder, *, vocab_size: int | None) -> Any:
    """The saved ``tokenizer/tokenizer.json`` as a :class:`tokenizers.Tokenizer`, after the checks a load makes.

    The tokenizer's configuration files may not name custom code or other files (as for
    :meth:`FineTuner.load <tunesmith.estimators.text.FineTuner.load>`); ``tokenizer.json`` is read inside the
    folder with a size cap and parsed from text, so no path in it is opened; its token ids
    must stay below the encoder's ``vocab_size``, and it must encode a short probe text (a
    tokenizer the library parses but panics on is refused here, not at the first prediction).
    """
    check_token_configs(safe)
    rel = "tokenizer/tokenizer.json"
    tokenizer = read_tokenizer_json(safe, rel)
    if vocab_size is not None:
        check_vocab(tokenizer, vocab_size, folder=safe, rel=rel)
    probe_tokenizer(tokenizer.encode_batch, path=safe.root / rel)
    return tokenizer


class OnnxPredictor(Predictor):
    """ONNX Runtime on the CPU, with the model's tokenizer; no PyTorch needed at prediction time."""

    backend = "onnx"

    def __init__(
        self,
        folder: Path,
        meta: dict[str, Any],
        *,
        precision: str,
        batch_size: int,
        threads: int | None,
        version: str | None,
        graph: Path | None = None,
        safe: SafeFolder | None = None,
    ) -> None:
        """``graph``: a graph to run instead of the exported one (the export's own checks)."""
        super().__init__(folder, meta, batch_size=batch_size, version=version, safe=safe)
        safe = self.safe
        if precision == "auto":
            precision = "int8" if safe.has(f"{ONNX_DIR}/{ONNX_FILES['int8']}") else "fp32"
        if graph is None:
            graph = safe.file(f"{ONNX_DIR}/{ONNX_FILES[precision]}", required=False)
        if graph is None:
            flag = " --quantize int8" if precision == "int8" else ""
            raise ArtifactError(
                f"no {precision} ONNX graph ({ONNX_DIR}/{ONNX_FILES[precision]})",
                path=folder,
                hint=f"Export it first: tunesmith export {folder} --format onnx{flag}",
            )
        self.precision = precision
        self.graph_path = graph
        tokenizer = _onnx_tokenizer(safe, vocab_size=self.vocab_size)
        tokenizer.enable_truncation(max_length=self.max_length)
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self._tokenizer_path = safe.root / "tokenizer" / "tokenizer.json"
        pad = tokenizer.token_to_id("[PAD]")
        cfg_rel = "tokenizer/tokenizer_config.json"
        if safe.has(cfg_rel):
            name = safe.read_json(cfg_rel).get("pad_token")
            if isinstance(name, dict):  # an AddedToken as older transformers versions saved it
                name = name.get("content")
            if isinstance(name, str) and tokenizer.token_to_id(name) is not None:
                pad = tokenizer.token_to_id(name)
        self._pad = int(pad) if pad is not None else 0
        self._session = onnx_session(graph, threads)
        # A batch of a row or two is too small to split across threads: on one thread it never
        # waits for a straggler when another process holds a core (concurrency-1 latency:
        # p99 12 ms against 19 ms with two threads while the cores were busy, p50 5.3 vs 7.4).
        many = (threads or default_threads()) > 1
        self._small_session = onnx_session(graph, 1) if many else self._session
        self._input_names = {i.name for i in self._session.get_inputs()}
        outputs = self._session.get_outputs()
        if not outputs or outputs[0].name != "logits":
            raise ArtifactError(
                "the ONNX graph has no 'logits' output", path=graph, hint="Re-export the model with tunesmith export"
            )
        shape = outputs[0].shape
        width = shape[1] if isinstance(shape, (list, tuple)) and len(shape) == 2 else None
        if isinstance(width, int) and width != self.n_outputs:
            raise ArtifactError(
                f"the ONNX graph gives {width} outputs but tunesmith.json field 'n_outputs' is {self.n_outputs}",
                path=graph,
                hint="Re-export the model with tunesmith export",
            )

    @property
    def pad_id(self) -> int:
        return self._pad

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        encoded = tokenizer_call(lambda: self._tokenizer.encode_batch(list(texts)), path=self._tokenizer_path)
        return [enc.ids for enc in encoded]

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": ids, "attention_mask": mask}
        session = self._small_session if ids.size <= SMALL_BATCH_TOKENS else self._session
        try:
            out = session.run(["logits"], {k: v for k, v in feed.items() if k in self._input_names})[0]
        except Exception as exc:  # onnxruntime's own types: the graph does not fit the model's inputs
            raise ArtifactError(
                f"the ONNX graph failed on a batch: {(str(exc).splitlines() or [type(exc).__name__])[0][:300]}",
                path=self.graph_path,
                hint="Re-export the model with tunesmith export",
            ) from None
        result = np.asarray(out, dtype=np.float32)
        if result.ndim != 2 or result.shape[1] != self.n_outputs:
            raise ArtifactError(
                f"the ONNX graph gives outputs of shape {list(result.shape)}, not (rows, {self.n_outputs})",
                path=self.graph_path,
                hint="Re-export the model with tunesmith export",
            )
        return result

    def warmup(self) -> None:
        """Run both sessions once (a short row, then a batch too big for the one-thread session)."""
        super().warmup()
        self.logits(["warm up " * 40] * 8)

    def close(self) -> None:
        self._session = None
        self._small_session = None


class TorchPredictor(Predictor):
    """The PyTorch model as :meth:`FineTuner.load` builds it."""

    backend = "torch"

    def __init__(
        self,
        folder: Path,
        meta: dict[str, Any],
        *,
        batch_size: int,
        threads: int | None,
        version: str | None,
        estimator: Any = None,
        safe: SafeFolder | None = None,
        backbone: str | None = None,
    ) -> None:
        """``estimator``: the loaded :class:`~tunesmith.estimators.text.FineTuner` of ``folder``, if any.

        ``backbone`` names the pre-trained backbone of a head-only or LoRA model whose
        metadata names a local folder (see :meth:`FineTuner.load <tunesmith.estimators.text.FineTuner.load>`).
        """
        super().__init__(folder, meta, batch_size=batch_size, version=version, safe=safe)
        import torch

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        if estimator is None:
            options = {"backbone": backbone} if backbone is not None else {}
            from tunesmith.estimators.text import open_text  # here, not at the top: ONNX serving must not load torch

            estimator = open_text(self.safe, meta, **options)
        self.estimator: Any = estimator
        self._backbone: Any = estimator.backbone_
        self._model: Any = estimator.model_
        self._pad = int(estimator.backbone_.pad_id)

    @property
    def pad_id(self) -> int:
        return self._pad

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        assert self._backbone is not None, "this predictor was closed"
        backbone = self._backbone
        return tokenizer_call(
            lambda: list(backbone.tokenize(texts, self.max_length)),
            path=self.safe.root / "tokenizer" / "tokenizer.json",
        )

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        torch = self._torch
        assert self._model is not None
        with torch.inference_mode():
            out = self._model(torch.from_numpy(ids), torch.from_numpy(mask))
        return np.asarray(out.float().numpy(), dtype=np.float32)

    def close(self) -> None:
        # Every reference to the network goes, or a reload would keep two models in memory.
        self._model = None
        self.estimator = None
        self._backbone = None


def open_text_predictor(
    folder: Path,
    safe: SafeFolder,
    meta: dict[str, Any],
    *,
    backend: str,
    precision: str,
    batch_size: int,
    threads: int | None,
    version: str | None,
    backbone: str | None = None,
) -> Predictor:
    """The predictor of an opened text model folder (``torch``, or ``onnx`` at ``precision``)."""
    if backend == "torch":
        if precision == "int8":
            raise ConfigError("int8 runs on the onnx backend only", key="precision", hint="Use --backend onnx")
        return TorchPredictor(
            folder, meta, batch_size=batch_size, threads=threads, version=version, safe=safe, backbone=backbone
        )
    return OnnxPredictor(
        folder, meta, precision=precision, batch_size=batch_size, threads=threads, version=version, safe=safe
    )
