"""A self-attentive sequential recommender (SASRec style) that is pre-trained, then fine-tuned.

The model reads a user's history in time order and scores every item as the next one.
Training is the library's transfer-learning recipe applied to interaction logs:

1. **Pre-train** on every interaction (views, plays, ratings of any value) to predict the next
   item: :meth:`SequentialRecommender.pretrain`.
2. **Fine-tune** on the outcome that matters (a rating >= 4, a purchase): the same network
   predicts the next *positive* item, its history still holding everything the user did:
   :meth:`SequentialRecommender.finetune`, with a lower learning rate, optionally frozen item
   embeddings, and early stopping on validation NDCG.

Items may carry content vectors (text embeddings of title and genres, say). An item's
representation is then its learned id vector plus a learned projection of its content, so an
item never seen in training still gets a vector from its content alone (cold start), and a
new user is served from a raw history (fold-in) without retraining.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from tunesmith.errors import ArtifactError, ConfigError, NotFittedError
from tunesmith.train.callbacks import StopTraining

LOSSES = ("ce", "sampled_softmax", "bpr", "bce")


# Fine-tuning starts from pre-trained weights, so it takes smaller steps than training from scratch.
PRETRAIN_DEFAULTS: dict[str, Any] = {"epochs": 50, "lr": 1e-3, "patience": 5}
FINETUNE_DEFAULTS: dict[str, Any] = {"epochs": 50, "lr": 3e-4, "patience": 5}
SCRATCH_DEFAULTS: dict[str, Any] = {"epochs": 50, "lr": 1e-3, "patience": 5}


SEQ_LIMITS = {"dim": 8192, "layers": 48, "heads": 256, "max_len": 100_000}
"""Largest accepted value of each size setting of :class:`SeqConfig`."""


@dataclass
class SeqConfig:
    """Settings of the sequential recommender; every field is checked by :meth:`check`."""

    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.2
    seed: int = 0

    def check(self) -> None:
        for name in ("dim", "layers", "heads", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"must be a positive integer, got {value!r}", key=name)
            # Upper bounds far above any useful model: a saved folder's settings are built
            # before its weights are compared with them, so they must not build forever.
            if value > SEQ_LIMITS[name]:
                raise ConfigError(f"must be at most {SEQ_LIMITS[name]:,}, got {value:,}", key=name)
        if self.dim % self.heads:
            raise ConfigError(f"dim {self.dim} must be a multiple of heads {self.heads}", key="heads")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"must be in [0, 1), got {self.dropout!r}", key="dropout")


@dataclass
class TrainSettings:
    """One training phase (pre-training or fine-tuning)."""

    epochs: int = 50
    lr: float = 1e-3
    batch_size: int = 128
    weight_decay: float = 0.0
    loss: str = "ce"
    negatives: int = 100
    patience: int = 5
    eval_every: int = 1
    freeze_item_embeddings: bool = False

    def check(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"must be one of {', '.join(LOSSES)}, got {self.loss!r}", key="loss")
        for name in ("epochs", "batch_size", "negatives", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"must be a positive integer, got {value!r}", key=name)
        if not self.lr > 0:
            raise ConfigError(f"must be above 0, got {self.lr!r}", key="lr")
        if self.patience < 0:
            raise ConfigError(f"must be 0 (off) or more, got {self.patience!r}", key="patience")


def phase_settings(
    pretrain: bool, pretrain_settings: dict[str, Any] | None, finetune_settings: dict[str, Any] | None
) -> tuple[TrainSettings, TrainSettings]:
    """The pre-training and fine-tuning settings of a fit: the defaults, then the given fields."""
    pre = TrainSettings(**{**PRETRAIN_DEFAULTS, **(pretrain_settings or {})})
    tune_defaults = FINETUNE_DEFAULTS if pretrain else SCRATCH_DEFAULTS
    return pre, TrainSettings(**{**tune_defaults, **(finetune_settings or {})})


class SASRecNet(nn.Module):
    """Item embeddings (+ projected content), learned positions, a causal transformer encoder."""

    def __init__(self, n_items: int, cfg: SeqConfig, content_dim: int = 0) -> None:
        super().__init__()
        self.n_items = n_items
        self.cfg = cfg
        # Code 0 is padding; item i has code i + 1.
        self.item_emb = nn.Embedding(n_items + 1, cfg.dim, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.content_proj = nn.Linear(content_dim, cfg.dim, bias=False) if content_dim else None
        layer = nn.TransformerEncoderLayer(
            cfg.dim, cfg.heads, dim_feedforward=cfg.dim * 2, dropout=cfg.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.register_buffer("content", torch.zeros(n_items + 1, content_dim), persistent=False)
        # Items with no training interaction: their id vector is never learned, so it is zeroed
        # and they are represented by their content alone.
        self.register_buffer("id_known", torch.ones(n_items + 1, 1), persistent=False)

    def item_table(self) -> torch.Tensor:
        """``(n_items + 1, dim)``: every item's representation (row 0 is padding)."""
        known: torch.Tensor = self.id_known  # type: ignore[assignment]
        table = self.item_emb.weight * known
        if self.content_proj is not None:
            table = table + self.content_proj(self.content)
        return table

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden state per position ``(batch, length, dim)`` for left-padded sequences of codes."""
        table = self.item_table()
        length = seq.shape[1]
        x = table[seq] * math.sqrt(self.cfg.dim) + self.pos_emb.weight[:length]
        x = self.drop(x)
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=seq.device), diagonal=1)
        blocked = causal[None] | (seq == 0)[:, None, :]
        # A padding position sees only padding: with every key blocked its attention would be
        # NaN, and NaN values leak into later layers even under zero weights. Letting every
        # position attend to itself keeps them finite; real positions never see padding.
        blocked &= ~torch.eye(length, dtype=torch.bool, device=seq.device)[None]
        mask = blocked.repeat_interleave(self.cfg.heads, dim=0)
        h = self.encoder(x, mask=mask)
        return self.norm(h)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores over items (``n_items`` columns, no padding column)."""
        return hidden @ self.item_table()[1:].T


@dataclass
class FitReport:
    """What a training phase did: losses and validation scores per epoch, the best epoch."""

    phase: str
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float | None = None
    seconds: float = 0.0
    stop_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _windows(sequences: Sequence[np.ndarray], positives: Sequence[np.ndarray] | None, max_len: int) -> list[tuple]:
    """Training windows: inputs and next-item targets of up to ``max_len`` positions each.

    A long history is cut into consecutive windows, so every interaction is a target once.
    With ``positives`` only the positions whose next item is positive count in the loss.
    """
    out = []
    for u, seq in enumerate(sequences):
        if len(seq) < 2:
            continue
        pos = positives[u] if positives is not None else None
        # Targets are seq[1:]; window ends walk back from the end of the history.
        end = len(seq)
        while end > 1:
            start = max(0, end - 1 - max_len)
            inputs = seq[start : end - 1]
            targets = seq[start + 1 : end]
            weight = pos[start + 1 : end] if pos is not None else np.ones(len(targets), dtype=bool)
            if weight.any():
                out.append((inputs, targets, weight))
            end = start + 1
    return out


def _pad_left(rows: Sequence[np.ndarray], width: int) -> np.ndarray:
    out = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        r = r[-width:]
        if len(r):
            out[i, width - len(r) :] = r
    return out


class SequentialRecommender:
    """Pre-train on all interactions, fine-tune on the labeled target, rank every item.

    Item codes are ``0 .. n_items-1``. ``content`` (``n_items x d``) optionally gives each item
    a content vector; ``known_items`` marks the items with training interactions (the others
    are represented by content only).
    """

    def __init__(
        self,
        n_items: int,
        cfg: SeqConfig | None = None,
        *,
        content: np.ndarray | None = None,
        known_items: np.ndarray | None = None,
        threads: int | None = None,
    ) -> None:
        self.cfg = cfg or SeqConfig()
        self.cfg.check()
        if n_items < 1:
            raise ConfigError(f"must be at least 1, got {n_items}", key="n_items")
        self.n_items = n_items
        if threads:
            torch.set_num_threads(threads)
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(self.cfg.seed)
        content_dim = 0 if content is None else int(content.shape[1])
        self.net = SASRecNet(n_items, self.cfg, content_dim)
        torch.random.set_rng_state(gen_state)
        if content is not None:
            if content.shape[0] != n_items:
                raise ConfigError(f"content has {content.shape[0]} rows for {n_items} items", key="content")
            c = torch.as_tensor(np.asarray(content, dtype=np.float32))
            self.net.content = torch.cat([torch.zeros(1, content_dim), c])
        self.set_known_items(known_items)
        self.reports: list[FitReport] = []
        self.fitted = False

    def set_known_items(self, known: np.ndarray | None) -> None:
        """Mark which items had training interactions (the others use their content only)."""
        flags = torch.ones(self.n_items + 1, 1)
        if known is not None:
            flags[1:, 0] = torch.as_tensor(np.asarray(known, dtype=np.float32))
        flags[0] = 0.0
        self.net.id_known = flags
        self._known = flags[1:, 0] > 0

    # --- training ----------------------------------------------------------------------------

    def pretrain(
        self,
        sequences: Sequence[np.ndarray],
        settings: TrainSettings | None = None,
        *,
        valid_fn: Callable[[SequentialRecommender], float] | None = None,
        on_epoch: Callable[[dict[str, float]], None] | None = None,
    ) -> FitReport:
        """Next-item prediction on every interaction of ``sequences`` (item codes in time order)."""
        return self._train("pretrain", sequences, None, settings or TrainSettings(), valid_fn, on_epoch)

    def finetune(
        self,
        sequences: Sequence[np.ndarray],
        positives: Sequence[np.ndarray],
        settings: TrainSettings | None = None,
        *,
        valid_fn: Callable[[SequentialRecommender], float] | None = None,
        on_epoch: Callable[[dict[str, float]], None] | None = None,
        penalty: Callable[[], torch.Tensor] | None = None,
    ) -> FitReport:
        """Predict the next *positive* item (``positives[u][t]`` flags position ``t``) from the full history.

        ``penalty()`` (a refit's pull toward the weights it started from) is added to every
        training step's loss.
        """
        return self._train(
            "finetune", sequences, positives, settings or TrainSettings(), valid_fn, on_epoch, penalty=penalty
        )

    def _loss(
        self, hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, s: TrainSettings
    ) -> torch.Tensor:
        h = hidden[weight]
        t = targets[weight]
        if s.loss == "ce":
            logits = self.net.logits(h)
            logits = logits.masked_fill(~self._known.to(logits.device), float("-inf"))
            return nn.functional.cross_entropy(logits, t)
        table = self.net.item_table()[1:]
        known = torch.nonzero(self._known).squeeze(1)
        neg = known[torch.randint(len(known), (len(t), s.negatives if s.loss == "sampled_softmax" else 1))]
        pos_score = (h * table[t]).sum(-1)
        neg_score = torch.einsum("bd,bnd->bn", h, table[neg])
        if s.loss == "sampled_softmax":
            logits = torch.cat([pos_score[:, None], neg_score], dim=1)
            return nn.functional.cross_entropy(logits, torch.zeros(len(t), dtype=torch.long))
        if s.loss == "bpr":
            return -nn.functional.logsigmoid(pos_score - neg_score[:, 0]).mean()
        pos_loss = nn.functional.binary_cross_entropy_with_logits(pos_score, torch.ones_like(pos_score))
        neg_loss = nn.functional.binary_cross_entropy_with_logits(neg_score[:, 0], torch.zeros_like(pos_score))
        return pos_loss + neg_loss

    def _train(
        self,
        phase: str,
        sequences: Sequence[np.ndarray],
        positives: Sequence[np.ndarray] | None,
        s: TrainSettings,
        valid_fn: Callable[[SequentialRecommender], float] | None,
        on_epoch: Callable[[dict[str, float]], None] | None,
        *,
        penalty: Callable[[], torch.Tensor] | None = None,
    ) -> FitReport:
        s.check()
        windows = _windows([np.asarray(q, dtype=np.int64) + 1 for q in sequences], positives, self.cfg.max_len)
        if not windows:
            raise ConfigError("no training sequence has two or more interactions", key="sequences")
        net = self.net
        # SASRec keeps its own loop: its batches are left-padded windows scored at every position
        # with (sampled) negatives drawn per step, and validation is full-ranking NDCG over the
        # catalogue, none of which the shared loop in tunesmith.train (one labeled example per row,
        # its own validation pass) expresses; each epoch still reaches the callbacks via on_epoch.
        params = [p for n, p in net.named_parameters() if not (s.freeze_item_embeddings and n == "item_emb.weight")]
        opt = torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
        rng = np.random.default_rng(self.cfg.seed + len(self.reports))
        torch.manual_seed(self.cfg.seed + len(self.reports))
        report = FitReport(phase=phase)
        best_state: dict[str, torch.Tensor] | None = None
        waited = 0
        started = time.perf_counter()
        width = self.cfg.max_len
        for epoch in range(1, s.epochs + 1):
            net.train()
            order = rng.permutation(len(windows))
            total, count = 0.0, 0
            for b in range(0, len(order), s.batch_size):
                batch = [windows[i] for i in order[b : b + s.batch_size]]
                inputs = torch.from_numpy(_pad_left([w[0] for w in batch], width))
                targets = torch.from_numpy(_pad_left([w[1] for w in batch], width)) - 1
                weight = torch.from_numpy(_pad_left([w[2].astype(np.int64) for w in batch], width)).bool()
                hidden = net(inputs)
                loss = self._loss(hidden, targets.clamp(min=0), weight, s)
                total += float(loss.detach()) * len(batch)
                if penalty is not None:
                    loss = loss + penalty()
                opt.zero_grad()
                loss.backward()
                opt.step()
                count += len(batch)
            row: dict[str, float] = {"epoch": epoch, "loss": total / max(count, 1)}
            if valid_fn is not None and (epoch % s.eval_every == 0 or epoch == s.epochs):
                self.fitted = True
                score = float(valid_fn(self))
                row["valid"] = score
                if report.best_score is None or score > report.best_score:
                    report.best_score, report.best_epoch = score, epoch
                    best_state = copy.deepcopy(net.state_dict())
                    waited = 0
                else:
                    waited += 1
            report.history.append(row)
            if on_epoch is not None:
                try:
                    on_epoch(row)
                except StopTraining as stop:
                    # A callback ended training: keep the best epoch seen, as early stopping does.
                    report.stop_reason = stop.reason
                    break
            if valid_fn is not None and s.patience and waited >= s.patience:
                break
        if best_state is not None:
            net.load_state_dict(best_state)
        net.eval()
        report.seconds = time.perf_counter() - started
        self.reports.append(report)
        self.fitted = True
        return report

    # --- scoring -----------------------------------------------------------------------------

    @torch.inference_mode()
    def score(self, histories: Sequence[np.ndarray], *, batch_size: int = 512) -> np.ndarray:
        """Scores ``(n, n_items)`` of every item as the next one after each history (fold-in: any history)."""
        if not self.fitted:
            raise NotFittedError("this recommender is not trained yet", hint="Call pretrain() or finetune() first")
        self.net.eval()
        out = np.empty((len(histories), self.n_items), dtype=np.float32)
        table = self.net.item_table()[1:]
        for b in range(0, len(histories), batch_size):
            rows = [np.asarray(h, dtype=np.int64) + 1 for h in histories[b : b + batch_size]]
            seq = torch.from_numpy(_pad_left(rows, self.cfg.max_len))
            hidden = self.net(seq)[:, -1]
            out[b : b + len(rows)] = (hidden @ table.T).numpy()
        if self.net.content_proj is None:
            # Without content, an item never seen in training has no vector at all: a score of
            # 0 would be an artefact, so it is never recommended.
            out[:, ~self._known.numpy()] = -np.inf
        return out

    def item_vectors(self) -> np.ndarray:
        """Every item's representation ``(n_items, dim)`` (for an index of item vectors)."""
        with torch.no_grad():
            return self.net.item_table()[1:].numpy().copy()

    def grown(self, n_items: int, *, learned: np.ndarray, seed: int = 0) -> SequentialRecommender:
        """A copy with ``n_items`` items (a refit's new ids at the end); the current weights copied.

        Items flagged in ``learned`` that have no learned id vector yet (new ones, and those known
        by their content only) start from the mean learned item vector, a little apart so that
        they can move apart, and count as known. New items get empty content vectors.
        """
        arrays, state = self.state()
        arrays = {k: np.array(v, copy=True) for k, v in arrays.items()}
        extra = n_items - self.n_items
        if extra < 0 or np.shape(learned) != (n_items,):
            raise ConfigError(f"cannot grow {self.n_items} items to {n_items} with {np.shape(learned)} flags")
        emb, was_known = arrays["net.item_emb.weight"], arrays["known_items"].astype(bool)
        fresh = np.concatenate([~was_known, np.ones(extra, dtype=bool)]) & np.asarray(learned, dtype=bool)
        base = emb[1:][was_known].mean(axis=0) if was_known.any() else np.zeros(emb.shape[1], emb.dtype)
        table = np.vstack([emb, np.zeros((extra, emb.shape[1]), emb.dtype)])
        # 0.02: the spread SASRecNet gives a fresh embedding.
        noise = np.random.default_rng(seed).normal(0.0, 0.02, (int(fresh.sum()), emb.shape[1]))
        table[1:][fresh] = base + noise
        content = arrays["content"]
        arrays["net.item_emb.weight"] = table
        arrays["content"] = np.vstack([content, np.zeros((extra, content.shape[1]), content.dtype)])
        arrays["known_items"] = (np.concatenate([was_known, np.zeros(extra, dtype=bool)]) | fresh).astype(np.uint8)
        return type(self).from_state(arrays, {**state, "n_items": n_items})

    # --- persistence ---------------------------------------------------------------------------

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays for safetensors and JSON-safe settings; :meth:`from_state` rebuilds the model."""
        arrays = {f"net.{k}": v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}
        content: torch.Tensor = self.net.content  # type: ignore[assignment]
        arrays["content"] = content[1:].numpy()
        arrays["known_items"] = self._known.numpy().astype(np.uint8)
        settings = {"n_items": self.n_items, "config": asdict(self.cfg), "reports": [r.to_dict() for r in self.reports]}
        return arrays, settings

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], settings: dict[str, Any]) -> SequentialRecommender:
        """Rebuild a model saved by :meth:`state`.

        Raises :class:`~tunesmith.errors.ArtifactError` when the settings or arrays do not
        describe one model (the caller checks shapes against the file before this builds it).
        """
        try:
            n_items = settings["n_items"]
            cfg = SeqConfig(**settings["config"])
            cfg.check()
            if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 1:
                raise ConfigError(f"must be a positive integer, got {n_items!r}", key="n_items")
        except ConfigError as exc:
            raise ArtifactError(f"sequential model state setting {exc.key!r}: {exc.message}") from None
        except (KeyError, TypeError) as exc:
            raise ArtifactError(
                f"sequential model state settings are malformed ({type(exc).__name__}: {exc})"
            ) from None
        content = arrays.get("content")
        known = arrays.get("known_items")
        if content is not None and (content.ndim != 2 or content.shape[0] != n_items):
            raise ArtifactError(f"sequential model content has shape {content.shape}, expected ({n_items}, d)")
        if known is not None and known.shape != (n_items,):
            raise ArtifactError(f"sequential model known_items has shape {known.shape}, expected ({n_items},)")
        model = cls(
            n_items,
            cfg,
            content=content if content is not None and content.shape[1] else None,
            known_items=known,
        )
        state = {k[4:]: torch.as_tensor(v) for k, v in arrays.items() if k.startswith("net.")}
        try:
            model.net.load_state_dict(state)
        except RuntimeError as exc:
            raise ArtifactError(f"sequential model weights do not fit: {str(exc).splitlines()[0]}") from None
        model.net.eval()
        reports = settings.get("reports", [])
        model.reports = [FitReport(**r) for r in reports] if isinstance(reports, list) else []
        model.fitted = True
        return model
