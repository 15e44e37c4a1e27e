"""Refitting a Personalizer: only the users and segments with new rows get new adapters.

:func:`refit_adapters` is what :meth:`Personalizer.refit
<tunesmith.personalize.personalizer.Personalizer.refit>` runs. It never writes into the store
it continues from (the champion's, which a server may be reading through
:meth:`~tunesmith.personalize.store.AdapterStore.refresh`): the new store is built in a
temporary folder beside its destination, from a byte-for-byte copy of the old one
(:meth:`~tunesmith.personalize.store.AdapterStore.copy_into`), and renamed into place only
once every adapter and ``personalize.json`` are written. A refit that fails leaves nothing.

For each user (and segment) with labeled rows in the new data:

* **an adapter exists**: it continues from its current weights on the earlier part of the
  user's new rows (plus a replayed sample of the user's old rows from ``replay``), with an
  L2-SP pull toward its current weights, then a WiSE-FT interpolation between the current
  and the continued adapter chosen on the user's held-out rows (the latest of the new rows
  and a draw of the old ones). It is used, as after a fit, only if it beats the shared model
  on the user's latest rows (the held-out new ones). With fewer than ``min_rows`` rows to
  train and validate on, or no new row to train or validate on, the adapter is kept as it
  was (``kept``);
* **no adapter exists**: one is trained as :meth:`fit` trains it (``new``), on the user's new
  rows (and old ones, when the plan replays), or, with too few rows, none is and the user keeps
  being answered by the segment's adapter or the shared model (``shared``).

Every other adapter is copied unchanged, byte for byte. The shared model is never changed.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from tunesmith.config import validate_settings
from tunesmith.data.io import data_sha256, read_table
from tunesmith.data.replay import RefitData, check_new_data
from tunesmith.data.schema import label_string, missing_mask, require_column
from tunesmith.errors import ArtifactError, ConfigError, DataError
from tunesmith.personalize.head import (
    HeadAdapter,
    HeadAdapterSettings,
    compare_logits,
    fit_head_adapter,
    validate_head_adapter,
)
from tunesmith.personalize.lora import LoraAdapter, LoraAdapterSettings, last_ffn_output, lora_logits, rows_between
from tunesmith.personalize.settings import time_ordered_holdout
from tunesmith.personalize.store import AdapterStore, adapter_key
from tunesmith.progress import progress
from tunesmith.runs.artifacts import AtomicDirectory
from tunesmith.train.continual import (
    AnchorPenalty,
    RefitPlan,
    RefitSettings,
    anchor_state,
    choose_alpha,
    interpolate_state,
)

__all__ = ["AdapterHost", "refit_adapters", "refit_folder"]

ACTIONS = ("retrained", "new", "kept", "shared")


class AdapterHost(Protocol):
    """What a refit needs of the Personalizer it fills (the new one, built with the old one's settings)."""

    refit_info_: dict[str, Any]
    user_column: Any
    segment_column: Any
    time_column: Any
    min_rows: Any
    valid_fraction: Any
    seed: Any
    adapter_kind: Any
    progress: Any
    settings: HeadAdapterSettings
    lora_settings: LoraAdapterSettings

    @property
    def base(self) -> Any: ...

    @property
    def store(self) -> AdapterStore: ...

    @property
    def labels(self) -> list[str]: ...

    @property
    def base_fingerprint(self) -> str: ...

    def shared_outputs(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]: ...

    def tap(self, df: pd.DataFrame, project: torch.Tensor | None = None) -> tuple[Any, torch.Tensor]: ...

    def _fit_lora(
        self, df: pd.DataFrame, y: np.ndarray, train_idx: np.ndarray, valid_idx: np.ndarray
    ) -> tuple[LoraAdapter, dict[str, Any]]: ...

    def _write_settings(self, folder: Path | None = None) -> None: ...


def refit_folder(source: str | os.PathLike[str], store: str | os.PathLike[str] | None) -> tuple[Path, Path | None]:
    """Where a refit of the store in ``source`` writes, and the scratch folder to remove with its Personalizer.

    ``store`` when given (it must not exist; the scratch is ``None``). Otherwise a folder named
    as ``source`` in a new temporary folder (the scratch), as a refitted model of another kind
    lives in memory until saved: never beside ``source``, which may sit in a registry.

    Raises:
        ArtifactError: ``store`` exists: a refit writes only a new store.
    """
    if store is not None:
        return _new_folder(Path(store)), None
    scratch = Path(tempfile.mkdtemp(prefix="tunesmith-refit-"))
    return scratch / Path(source).name, scratch


def _new_folder(folder: Path) -> Path:
    if os.path.lexists(folder):
        raise ArtifactError(
            "already exists; a refit writes its adapters into a new store and never into one that exists",
            path=folder,
            hint="Pass store= a folder that does not exist yet",
        )
    return folder


def refit_adapters(
    host: AdapterHost,
    source: AdapterStore,
    data: Any,
    y: Any = None,
    *,
    replay: Any = None,
    target: str | None = None,
    settings: Mapping[str, Any],
    scratch: Path | None = None,
) -> dict[str, Any]:
    """Write ``host``'s store (a new folder) as ``source`` refitted on ``data``; return its ``refit_info_``.

    ``host`` is the new Personalizer, whose ``store`` setting names the folder to create; it
    gets ``refit_info_`` and its ``personalize.json``. ``source`` is only read. ``scratch``
    (from :func:`refit_folder`) is removed when ``host`` is garbage-collected, or at once if
    the refit fails. See the module docstring for what changes; :meth:`Personalizer.refit`
    for the arguments.

    Raises:
        ConfigError: ``y`` given, or a refit setting refused.
        DataError: no rows, a missing column or a label the shared model does not know.
        ArtifactError: the shared model changed since ``source`` was opened, or the folder exists.
    """
    try:
        info = _refit(host, source, data, y, replay=replay, target=target, settings=settings)
    except BaseException:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        raise
    if scratch is not None:
        weakref.finalize(host, shutil.rmtree, scratch, ignore_errors=True)
    return info


def _refit(
    host: AdapterHost, source: AdapterStore, data: Any, y: Any, *, replay: Any, target: str | None,
    settings: Mapping[str, Any],
) -> dict[str, Any]:  # fmt: skip
    started = time.perf_counter()
    if y is not None:
        raise ConfigError("the labels are a column of data, not y", key="y", hint="Name it with target=")
    options = validate_settings(RefitSettings, dict(settings))
    plan = options.plan(has_replay=replay is not None)
    new, new_sha, new_counts = _labeled(host, data, target, "new data")
    old, old_sha, old_counts = _labeled(host, replay, target, "replay data") if replay is not None else (None, None, {})
    # The held-out new rows are each user's latest ``valid_fraction``, as in fit, not a random
    # ``valid_size`` draw: that would let an adapter validate on rows older than some it trained on.
    fraction = host.valid_fraction
    folder = _new_folder(Path(host.store.folder))
    job = _Refit(host, options, plan, fraction)
    with AtomicDirectory(folder, overwrite=False) as tmp:
        parent = source.copy_into(tmp)
        # The copy is read back through every check of a first open; a shared model changed since
        # ``source`` was opened is refused here (its fingerprint no longer matches).
        job.store = AdapterStore(tmp, host.base_fingerprint, dims=host.store.dims)
        job.run(new, old)
        info = job.info(source)
        info.update(
            data={"new_sha256": new_sha, "replay_sha256": old_sha},
            dropped={"new": new_counts, "replay": old_counts},
            parent=parent,
            seconds=round(time.perf_counter() - started, 3),
        )
        host.refit_info_ = info
        host._write_settings(tmp)
    return info


def _labeled(host: AdapterHost, data: Any, target: str | None, what: str) -> tuple[pd.DataFrame, str, dict[str, int]]:
    """The labeled rows of ``data`` (the label in the shared model's target column), checked; their SHA-256."""
    if data is None:
        raise DataError(f"the {what} is missing", hint="Pass a file or a DataFrame of labeled rows")
    df, file = (data.reset_index(drop=True), None) if isinstance(data, pd.DataFrame) else (read_table(data), str(data))
    schema = host.base.schema_
    wanted = schema.target
    read = df
    if target is not None and target != wanted:
        require_column(df, target, "target", file)
        df = df.assign(**{wanted: df[target]})
    columns = [host.user_column, *(c for c in (host.segment_column, host.time_column) if c)]
    columns += [c for c in schema.feature_columns if c not in columns]
    check_new_data(df, columns=columns, target=wanted, labels=host.labels, file=file, what=what)
    missing = missing_mask(df[wanted]).to_numpy(dtype=bool)
    if missing.all():
        raise DataError(f"the {what} has no labeled rows", file=file, column=wanted, hint="Fill the target column")
    return df.loc[~missing].reset_index(drop=True), data_sha256(data, read), {"missing_label": int(missing.sum())}


class _Refit:
    """One refit's work: which adapters change, training them, and what is recorded."""

    def __init__(self, host: AdapterHost, options: RefitSettings, plan: RefitPlan, fraction: float) -> None:
        self.host, self.options, self.plan, self.fraction = host, options, plan, fraction
        self.store: AdapterStore | None = None
        self.target = str(host.base.schema_.target)
        self.index = {name: i for i, name in enumerate(host.labels)}
        lora = host.adapter_kind == "lora"
        fit_steps, fit_lr = (
            (host.lora_settings.steps, host.lora_settings.lr) if lora else (host.settings.steps, host.settings.lr)
        )
        # Continuing a trained adapter: half a fit's steps (each a pass over all its rows), its lr.
        self.steps = options.epochs or max(1, fit_steps // 2)
        self.lr = options.lr or fit_lr
        self.l2 = host.lora_settings.l2 if lora else host.settings.l2
        self.done: dict[str, dict[str, list[str]]] = {}
        self.adapters: dict[str, dict[str, Any]] = {}
        self.train_seconds = 0.0
        self.replay_rows = 0

    def y(self, frame: pd.DataFrame) -> np.ndarray:
        return np.array([self.index[label_string(v)] for v in frame[self.target]], dtype=np.int64)

    # --- which adapters change ---------------------------------------------------------------

    def run(self, new: pd.DataFrame, old: pd.DataFrame | None) -> None:
        host = self.host
        self.replay_rows = 0 if old is None else len(old)
        levels = [("user", host.user_column)] + ([("segment", host.segment_column)] if host.segment_column else [])
        work: list[tuple[str, str, str, pd.DataFrame, np.ndarray, pd.DataFrame | None]] = []
        replayed = np.zeros(0 if old is None else len(old), dtype=bool)
        for level, column in levels:
            self.done[level] = {action: [] for action in ACTIONS}
            held = time_ordered_holdout(new, column, self.fraction, host.time_column)
            before = _groups(old, column) if old is not None else {}
            for value, mine in _groups(new, column).items():
                rows = new.iloc[mine].reset_index(drop=True)
                past = None
                if old is not None:
                    idx = before.get(value, np.zeros(0, dtype=np.int64))
                    past, replayed[idx] = old.iloc[idx].reset_index(drop=True), True
                work.append((level, column, str(value), rows, held[mine], past))
        if host.adapter_kind == "head":
            # One batched encoder pass over every row any adapter will see, instead of one per user.
            host.shared_outputs(new if old is None else pd.concat([new, old.loc[replayed]], ignore_index=True))
        bar = progress(
            f"refit {host.adapter_kind} adapters", len(work), unit="adapters", enabled=host.progress and len(work) > 2
        )
        with self._store().deferred(), bar as advance:
            for level, column, value, rows, held, theirs in work:
                key = adapter_key(level, value, column if level == "segment" else None)
                if key in self._store():
                    self.continue_adapter(level, key, value, rows, held, theirs)
                else:
                    self.new_adapter(level, column, key, value, rows, theirs)
                advance()

    def _store(self) -> AdapterStore:
        assert self.store is not None, "the refit's store is opened before adapters are trained"
        return self.store

    # --- an adapter that exists: continued -----------------------------------------------------

    def continue_adapter(
        self, level: str, key: str, value: str, rows: pd.DataFrame, held: np.ndarray, old: pd.DataFrame | None
    ) -> None:
        data = RefitData(
            rows.loc[~held], old, target=self.target, stratify=True, replay_ratio=self.options.replay_ratio,
            use_replay=self.plan.replay, valid_size=self.options.valid_size, seed=self.options.seed,
            eval_set=rows.loc[held],
        )  # fmt: skip
        n_train, n_new, n_old = len(data.train), len(data.new_valid), len(data.old_valid)
        if n_train + n_new + n_old < self.host.min_rows or not n_new or not len(data.new_train):
            self.done[level]["kept"].append(value)
            return
        part = pd.concat([data.train, data.new_valid, data.old_valid], ignore_index=True)
        t = torch.as_tensor(self.y(part))
        tensors = self._store().load(key)
        current: HeadAdapter | LoraAdapter = (
            LoraAdapter.from_tensors(tensors) if "scale" in tensors else HeadAdapter.from_tensors(tensors)
        )
        logits_of, shared, frozen = self._forward(current, part)
        anchor = anchor_state(current)
        tuned = copy.deepcopy(current)
        train, held_out = slice(0, n_train), slice(n_train, len(part))
        started = time.perf_counter()
        with frozen:
            _continue(tuned, lambda a: logits_of(a, train), t[train], anchor, self)
        self.train_seconds += time.perf_counter() - started
        y_held = t[held_out]

        def candidate(alpha: float) -> nn.Module:
            out = copy.deepcopy(tuned)
            out.load_state_dict(interpolate_state(anchor, tuned.state_dict(), alpha))
            return out.eval()

        def scores(alpha: float) -> list[float]:
            with torch.no_grad():
                out = logits_of(candidate(alpha), held_out)
            periods = [(out[:n_new], y_held[:n_new]), (out[n_new:], y_held[n_new:])]
            return [-float(nn.functional.cross_entropy(o, y)) for o, y in periods if len(y)]

        alpha: float | None = None
        trials: list[dict[str, Any]] = []
        final: nn.Module = tuned.eval()
        if self.plan.interpolate:
            alpha, trials = choose_alpha(scores, self.plan.alphas)
            final = candidate(alpha)
        with torch.no_grad():
            mine = logits_of(final, held_out).numpy()
            before = logits_of(current.eval(), held_out).numpy()
        z, yh = shared[held_out], y_held.numpy()
        # Used, as after a fit, if it beats the shared model on the user's latest rows: the new
        # ones. The old held-out rows weigh in WiSE-FT's choice and in the record, but a user
        # whose taste changed must not be sent back to the shared model for the rows they left.
        check = compare_logits(z[:n_new], mine[:n_new], yh[:n_new])
        periods = {"new": slice(0, n_new), "old": slice(n_new, n_new + n_old)}
        scored = {
            name: {
                "rows": sl.stop - sl.start,
                "shared": compare_logits(z[sl], before[sl], yh[sl])["shared"],
                "current": compare_logits(z[sl], before[sl], yh[sl])["adapter"],
                "refitted": compare_logits(z[sl], mine[sl], yh[sl])["adapter"],
            }
            for name, sl in periods.items()
            if sl.stop > sl.start
        }
        refit = {"alpha": alpha, "alpha_trials": trials, "rows": data.rows(), "replay": data.replay_note}
        self._put(level, key, value, final, n_train, n_new, check, "retrained", refit=refit | {"held_out": scored})

    def _forward(
        self, adapter: HeadAdapter | LoraAdapter, part: pd.DataFrame
    ) -> tuple[Callable[[nn.Module, slice], torch.Tensor], np.ndarray, Any]:
        """Logits of an adapter of ``adapter``'s kind on rows of ``part``, the shared logits, and the freeze."""
        host = self.host
        if isinstance(adapter, HeadAdapter):
            f, z = (torch.as_tensor(a, dtype=torch.float32) for a in host.shared_outputs(part))
            return (lambda a, rows: a(f[rows], z[rows])), z.numpy(), nullcontext()
        ft = host.base
        ffn, head, pooling = last_ffn_output(ft.backbone_), ft.model_.head, ft.backbone_.pooling
        tapped, shared = host.tap(part, project=adapter.A.detach())

        def logits(a: nn.Module, rows: slice) -> torch.Tensor:
            assert isinstance(a, LoraAdapter)
            return lora_logits(a, ffn, head, rows_between(tapped, rows.start, rows.stop), pooling)

        return logits, shared.numpy(), _frozen(ffn, head)

    # --- an adapter that does not exist: as fit makes it ---------------------------------------

    def new_adapter(
        self, level: str, column: str, key: str, value: str, rows: pd.DataFrame, old: pd.DataFrame | None
    ) -> None:
        host = self.host
        # The user's old rows come first (they are older) and train too when the plan replays.
        frame = pd.concat([old, rows], ignore_index=True) if old is not None and self.plan.replay else rows
        held = time_ordered_holdout(frame, column, host.valid_fraction, host.time_column)
        if len(frame) < host.min_rows or not held.any():
            self.done[level]["shared"].append(value)
            return
        y = self.y(frame)
        train_idx, valid_idx = np.flatnonzero(~held), np.flatnonzero(held)
        started = time.perf_counter()
        adapter: HeadAdapter | LoraAdapter
        if host.adapter_kind == "head":
            f, z = host.shared_outputs(frame)
            adapter = fit_head_adapter(f[train_idx], z[train_idx], y[train_idx], host.settings, seed=host.seed)
            check = validate_head_adapter(adapter, f[valid_idx], z[valid_idx], y[valid_idx])
        else:
            adapter, check = host._fit_lora(frame, y, train_idx, valid_idx)
        self.train_seconds += time.perf_counter() - started
        self._put(level, key, value, adapter, len(train_idx), len(valid_idx), check, "new")

    # --- writing and recording -----------------------------------------------------------------

    def _put(
        self, level: str, key: str, value: str, adapter: nn.Module, n_train: int, n_valid: int,
        check: dict[str, Any], action: str, *, refit: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        lora = isinstance(adapter, LoraAdapter)
        settings = (self.host.lora_settings if lora else self.host.settings).__dict__
        if refit is not None:
            settings = {**settings, "steps": self.steps, "lr": self.lr}
        meta = {
            "level": level,
            "kind": "lora" if lora else "head",
            "rows_train": n_train,
            "rows_valid": n_valid,
            "used": bool(check["used"]),
            "validation": check,
            "settings": settings,
            **({"refit": refit} if refit is not None else {}),
        }
        assert isinstance(adapter, (HeadAdapter, LoraAdapter))
        self._store().put(key, adapter.tensors(), meta)
        self.done[level][action].append(value)
        self.adapters[key] = {"action": action, "used": bool(check["used"]), **(refit or {})}

    def info(self, source: AdapterStore) -> dict[str, Any]:
        """``refit_info_`` (less the data hashes, parent and wall time, which the caller adds)."""
        host = self.host
        retrained = [a for a in self.adapters.values() if a["action"] == "retrained"]
        rows = {
            k: sum(a["rows"][k] for a in retrained)
            for k in ("new_train", "new_valid", "replay_train", "old_valid", "train")
        }
        alphas: dict[str, int] = {}
        for a in retrained:
            if a["alpha"] is not None:
                alphas[str(a["alpha"])] = alphas.get(str(a["alpha"]), 0) + 1
        out: dict[str, Any] = {
            "plan": self.plan.to_dict(),
            "rows": rows,
            "replay": {
                "given": self.replay_rows,
                "old_rows": sum(a["replay"].get("old_rows", 0) for a in retrained),
                "replayed": sum(a["replay"].get("replayed", 0) for a in retrained),
                "stratified_by": self.target,
            },
            # WiSE-FT chooses one alpha per adapter (in each one's index entry, ``refit``): here how often each won.
            "alpha": None,
            "alpha_trials": [],
            "alphas_chosen": alphas,
            "held_out": _pooled(retrained),
            "train_seconds": round(self.train_seconds, 3),
            "settings": {"steps": self.steps, "lr": self.lr, "held_out_fraction": self.fraction},
            "shared_model": {"fingerprint": host.base_fingerprint, "refitted": False},
            "adapters": {"used": sum(a["used"] for a in self.adapters.values()), "trained": len(self.adapters)},
            "notes": {
                "kept": (
                    f"adapter left as it was: fewer than min_rows={host.min_rows} rows to train and validate on, "
                    "or no new row to train or to validate on"
                ),
                "shared": f"no adapter: fewer than min_rows={host.min_rows} rows, or none to validate on, as in fit",
            },
        }
        for level, name in (("user", "users"), ("segment", "segments")):
            if level not in self.done:
                continue
            done = self.done[level]
            before = sum(1 for k in source if k.startswith(f"{level}:"))
            out[name] = {**{k: sorted(v) for k, v in done.items()}, "unchanged": before - len(done["retrained"])}
        return out


def _groups(frame: pd.DataFrame, column: str) -> dict[str, np.ndarray]:
    """The row positions of each value of ``column`` (as a string), in order of first appearance."""
    found = frame.groupby(frame[column].astype(str), sort=False).indices
    return {str(k): np.asarray(v, dtype=np.int64) for k, v in found.items()}


def _pooled(retrained: list[dict[str, Any]]) -> dict[str, Any]:
    """Held-out log loss and accuracy of the shared model, the current and the refitted adapters, pooled over rows."""
    out: dict[str, Any] = {}
    for period in ("new", "old"):
        scored = [a["held_out"][period] for a in retrained if period in a["held_out"]]
        n = sum(s["rows"] for s in scored)
        if not n:
            continue
        out[period] = {"rows": n}
        for who in ("shared", "current", "refitted"):
            out[period][who] = {m: sum(s[who][m] * s["rows"] for s in scored) / n for m in ("log_loss", "accuracy")}
    return out


def _continue(
    adapter: HeadAdapter | LoraAdapter,
    logits: Callable[[nn.Module], torch.Tensor],
    t: torch.Tensor,
    anchor: Mapping[str, torch.Tensor],
    job: _Refit,
) -> None:
    """Train ``adapter`` on from its current weights: fit's loss and L2 penalty, plus L2-SP toward ``anchor``."""
    penalty = AnchorPenalty(adapter, anchor, job.plan.penalty)
    # fit's own penalty pulls B (and c) toward zero, i.e. toward the shared model; L2-SP pulls every
    # trained tensor toward the adapter being continued.
    decayed = [adapter.B, adapter.c] if isinstance(adapter, HeadAdapter) else [adapter.B]
    trainable = [p for p in adapter.parameters() if p.requires_grad]
    adapter.train()
    # Full-batch Adam steps, as fit_head_adapter and fit_lora_adapter take (each step sees every row).
    opt = torch.optim.Adam(trainable, lr=job.lr)
    for _ in range(job.steps):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(logits(adapter), t)
        loss = loss + job.l2 * sum((p**2).sum() for p in decayed) + penalty()
        loss.backward()
        opt.step()
    adapter.eval()


@contextmanager
def _frozen(*modules: nn.Module) -> Iterator[None]:
    """The shared block and head in eval mode with no gradients, restored afterwards (a LoRA step needs neither)."""
    params = [p for m in modules for p in m.parameters()]
    was = ([m.training for m in modules], [p.requires_grad for p in params])
    for m in modules:
        m.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for m, flag in zip(modules, was[0], strict=True):
            m.train(flag)
        for p, flag in zip(params, was[1], strict=True):
            p.requires_grad_(flag)
