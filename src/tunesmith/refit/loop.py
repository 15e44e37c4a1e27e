"""One run of the refit loop: monitor, refit the champion, register, gate, promote.

:func:`run_loop` does each step once per *loop key*, a fingerprint of what the refit depends
on: the SHA-256 of the new data and of the replay data, the champion's weights, the refit
settings and how the new test split is carved. A run with a key that already finished only
reports the earlier outcome, so a scheduler may start the loop as often as it likes.

It is safe to kill at any step. The state of a key is a small JSON file
(``STATE_DIR/<key>/state.json``) written atomically after each step, and a rerun goes on from
the last step it records:

* the refit writes into ``STATE_DIR/<key>/challenger`` (saving is atomic, so a folder there is
  a complete model) and only a complete model is registered;
* before refitting, the registry is searched for a version whose notes carry the key, so a
  kill between registering and writing the state never registers a second copy;
* the gate's decision is written into the version's record (``notes.gate``) before any
  promotion, and a rerun reads it there instead of judging again;
* promoting is safe to repeat (the registry's champion alias changes in one atomic step).

Exit codes (:attr:`LoopResult.exit_code`): 0 when the challenger was promoted (or accepted
with ``promote: false``) or there was nothing to do, 3 when the gate rejected it; a user
error raises a :class:`~tunesmith.errors.TunesmithError` (the CLI exits 2). See docs/loop.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.data.io import file_sha256, read_table
from tunesmith.data.replay import hold_out
from tunesmith.errors import ArtifactError, ConfigError, DataError
from tunesmith.kinds import load
from tunesmith.monitor import monitor
from tunesmith.refit.config import LoopConfig, load_loop_config, make_loop_config
from tunesmith.refit.gate import MIN_TEST_ROWS, gate_version
from tunesmith.runs.artifacts import atomic_write_json, json_safe
from tunesmith.runs.mlflow_registry import open_registry

EXIT_OK = 0
EXIT_REJECTED = 3
STATE_FILE = "state.json"
LOCK_FILE = ".lock"
CHALLENGER_DIR = "challenger"
FORMAT = "tunesmith-loop"
FINISHED = ("promoted", "rejected", "accepted")
"""Outcomes after which a key has nothing left to do (``skipped`` is not one: the monitor runs again)."""

Promoter = Callable[..., tuple[Any, "dict[str, Any] | None"]]
"""``promoter(registry, number, server=..., server_root=...) -> (champion, server answer)``."""


@dataclass
class LoopResult:
    """What one run of the loop did or found.

    ``outcome``: ``promoted``, ``accepted`` (the gate passed, promotion is off), ``rejected``
    or ``skipped`` (the monitor saw nothing to act on). ``repeated`` is true when the key had
    finished before and this run did nothing. ``steps`` lists the steps this run did.
    """

    outcome: str
    key: str
    repeated: bool
    champion: int | None
    version: int | None
    state_path: Path
    steps: list[str] = field(default_factory=list)
    decision: dict[str, Any] | None = None
    monitor: dict[str, Any] | None = None
    refit: dict[str, Any] | None = None
    server: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        """3 when the gate rejected the challenger, else 0."""
        return EXIT_REJECTED if self.outcome == "rejected" else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (and the exit code)."""
        return {
            "outcome": self.outcome,
            "exit_code": self.exit_code,
            "key": self.key,
            "repeated": self.repeated,
            "champion": self.champion,
            "version": self.version,
            "state_path": str(self.state_path),
            "steps": list(self.steps),
            "decision": self.decision,
            "monitor": self.monitor,
            "refit": self.refit,
            "server": self.server,
        }


def run_loop(
    config: LoopConfig | Mapping[str, Any] | str | os.PathLike[str],
    *,
    promoter: Promoter | None = None,
    log: Callable[[str], None] | None = None,
) -> LoopResult:
    """Run the refit loop once: monitor, refit the registry's champion, register, gate, promote.

    Args:
        config: a :class:`LoopConfig`, a mapping of its settings, or a YAML file (whose
            relative paths are read from its folder).
        promoter: how an accepted challenger is promoted, called as
            ``promoter(registry, number, server=..., server_root=...)``. The CLI passes
            :func:`tunesmith.serve.swap.promote` (hot reload of a running server). ``None``
            promotes in the registry alone, which is all a config without ``server`` needs.
        log: called with one line per step as it starts (the CLI prints them).

    Returns:
        A :class:`LoopResult`; its ``exit_code`` is 0 (promoted, accepted or nothing to do)
        or 3 (the gate rejected the challenger).

    Raises:
        ConfigError: a bad setting, or a ``server`` without a ``promoter``.
        DataError: a data file that is missing, unreadable or does not fit the model.
        ArtifactError: a registry without a champion, or another loop holding the lock.
        ConfigError: a registry of recommenders with ``new_test_size`` instead of a
            ``new_test`` log (an interaction log is not carved at random).
    """
    cfg = _as_config(config)
    say = log or (lambda _line: None)
    if cfg.server is not None and promoter is None:
        raise ConfigError(
            "promoting into a running server needs a promoter",
            key="server",
            hint="Pass promoter=tunesmith.serve.swap.promote, or run `tunesmith loop` (it does)",
        )
    check_files(cfg)
    reg = open_registry(cfg.registry)
    if reg.champion() is None:
        raise ArtifactError(
            "has no champion to refit",
            path=cfg.registry,
            hint="Register a first model and promote it (tunesmith register, tunesmith promote)",
        )
    recommender = (reg.identity() or {}).get("kind") == "recommender"
    if recommender and cfg.new_test is None:
        # Refused before anything trains. Rows drawn at random from a log are interactions
        # from the middle of the period the challenger is refitted on, with the user's later
        # ones in its history: no test of what comes next. The gate needs a later log.
        raise ConfigError(
            "a registry of recommenders needs new_test, an interaction log later than new_data; "
            "new_test_size would carve random interactions out of the log the challenger is refitted on",
            key="new_test_size",
            hint="Give new_test: the interactions after new_data's (split the new log by time), and drop new_test_size",
        )
    root = state_root(cfg)
    with _exclusive(root):
        return _run_locked(cfg, reg, root, promoter, say, recommender=recommender)


def _run_locked(
    cfg: LoopConfig,
    reg: Any,
    root: Path,
    promoter: Promoter | None,
    say: Callable[[str], None],
    *,
    recommender: bool = False,
) -> LoopResult:
    champion = reg.champion()
    inputs = loop_inputs(cfg)
    key, parent = loop_key(inputs, champion)
    folder = root / key
    state = _read_state(folder) or {
        "format": FORMAT,
        "version": 1,
        "key": key,
        "created": _now(),
        "inputs": inputs,
        "champion": {"number": parent, "model_version": champion.model_version},
        "steps": {},
        "outcome": None,
    }
    steps = state["steps"]
    if state.get("outcome") in FINISHED:
        say(f"loop {key} finished before: {state['outcome']}; nothing to do")
        return _result(state, folder, repeated=True, done=[])
    done: list[str] = []
    work = _Work(cfg, reg, champion, recommender=recommender)

    if cfg.when != "always" and not (steps.get("monitor") or {}).get("go"):
        say(f"monitoring version {champion.number} (refit when: {cfg.when})")
        steps["monitor"] = _monitor_step(cfg, champion.path)
        done.append("monitor")
        if not steps["monitor"]["go"]:
            state["outcome"] = "skipped"
            _write_state(folder, state)
            say(f"monitor: {steps['monitor']['status']}; no refit")
            return _result(state, folder, repeated=False, done=done)
        state["outcome"] = None
        _write_state(folder, state)

    version = find_version(reg, key)
    if version is None:
        challenger_dir = folder / CHALLENGER_DIR
        if not (challenger_dir / "tunesmith.json").is_file():
            _clear_leftovers(folder)
            say(f"refitting version {champion.number} on {Path(cfg.new_data).name}")
            target = work.target(state)
            train, _ = work.split(target)
            steps["refit"] = _refit_step(cfg, work.model(), train, target, challenger_dir)
            done.append("refit")
            _write_state(folder, state)
        if not steps.get("refit"):
            # Killed after the save, before the state recorded it: the saved model carries the record.
            steps["refit"] = _saved_refit_info(challenger_dir) or None
        notes = {
            "loop_key": key,
            "loop_inputs": inputs["fingerprint"],
            "loop_parent": parent,
            "data": {"new_sha256": inputs["new_sha256"], "replay_sha256": inputs["replay_sha256"]},
            "refit": _summary(steps.get("refit") or {}),
        }
        version = _register_step(reg, challenger_dir, notes)
        done.append("register")
        say(f"registered version {version.number}{_described(notes['refit'])}")
    steps["register"] = {"version": version.number, "model_version": version.model_version}
    if not steps.get("refit") and version.path.is_dir():
        steps["refit"] = _saved_refit_info(version.path) or None  # a state file lost: the registered copy's
    _write_state(folder, state)
    # The registry holds its own copy now; a kill before this line leaves a folder the next run removes.
    shutil.rmtree(folder / CHALLENGER_DIR, ignore_errors=True)
    _clear_leftovers(folder)

    decision = version.notes.get("gate")
    current = reg.champion().number
    # A pass judged against a champion that no longer serves (someone promoted another
    # version meanwhile) says nothing about the one that does: judge again.
    stale = (
        isinstance(decision, dict)
        and decision.get("accepted")
        and decision.get("champion") not in (current, version.number)
    )
    if isinstance(decision, dict) and not stale:
        if not decision.get("accepted") and version.status != "rejected":
            reg.reject(version.number, "; ".join(decision.get("reasons") or ["rejected by the gate"]))
    else:
        say(f"gating version {version.number} against version {current}")
        _, new_test = work.split(work.target(state))
        decision = _gate_step(cfg, reg, version.number, new_test, work.target(state))
        done.append("gate")
    steps["gate"] = decision
    why = list(decision.get("reasons") or [])
    # Rejected outside this gate (by hand, or before a killed gate wrote its record): a
    # rejected version is never promoted, whatever the gate said.
    overruled = bool(decision.get("accepted")) and version.status == "rejected"
    if overruled:
        steps["rejected"] = {"because": version.notes.get("rejected_because"), "at": _now()}
        why = [f"marked rejected in the registry: {steps['rejected']['because']}"]
    if not decision.get("accepted") or overruled:
        state["outcome"] = "rejected"
        _write_state(folder, state)
        say(f"version {version.number} rejected: {'; '.join(why)}")
        return _result(state, folder, repeated=False, done=done)
    if not cfg.promote:
        state["outcome"] = "accepted"
        _write_state(folder, state)
        say(f"version {version.number} passes the gate; promote is off, it stays a candidate")
        return _result(state, folder, repeated=False, done=done)
    _write_state(folder, state)

    say(f"promoting version {version.number}" + (f" into {cfg.server}" if cfg.server else ""))
    answer = _promote_step(cfg, reg, version.number, promoter)
    done.append("promote")
    steps["promote"] = {"champion": version.number, "server": answer, "at": _now()}
    state["outcome"] = "promoted"
    _write_state(folder, state)
    return _result(state, folder, repeated=False, done=done)


# --- the steps (module functions, so a test can make one fail) ------------------------------


def _monitor_step(cfg: LoopConfig, model_path: Path) -> dict[str, Any]:
    """Monitor the champion; ``go`` says whether the refit goes ahead under ``cfg.when``."""
    m = cfg.monitor
    result = monitor(
        str(model_path),
        m.reference or cfg.old_test,
        m.current or cfg.new_data,
        labels=m.labels,
        target=cfg.target,
        key=m.key,
        settings=m.settings,
        progress_bar=False,
    )
    report = str(result.save(m.report)["html"]) if m.report else None
    go = result.status in ("drift", "alert") if cfg.when == "drift" else result.status == "alert"
    return {
        "status": result.status,
        "exit_code": result.exit_code,
        "go": go,
        "alerts": len(result.alerts),
        "report": report,
        "at": _now(),
    }


def _refit_step(cfg: LoopConfig, champion: Any, train: Any, target: str | None, out: Path) -> dict[str, Any]:
    """Refit ``champion`` on ``train`` (+ replay) and save the challenger into ``out``."""
    challenger = champion.refit(train, replay=cfg.replay, target=target, **cfg.refit.model_dump())
    challenger.save(out)
    info = dict(getattr(challenger, "refit_info_", None) or {})
    return {**json_safe(info), "at": _now()}


def _register_step(reg: Any, folder: Path, notes: Mapping[str, Any]) -> Any:
    """Copy the saved challenger into the registry as a candidate carrying the loop key."""
    return reg.register(folder, notes=notes)


def _gate_step(cfg: LoopConfig, reg: Any, number: int, new_test: Any, target: str | None) -> dict[str, Any]:
    """Judge version ``number`` against the champion; the registry records the decision first."""
    decision, _ = gate_version(reg, number, new_test, cfg.old_test, target=target, margin=cfg.margin)
    return dict(json_safe(decision.to_dict()))


def _promote_step(cfg: LoopConfig, reg: Any, number: int, promoter: Promoter | None) -> dict[str, Any] | None:
    """Make version ``number`` the champion (and serve it, with a server)."""
    if promoter is None:
        reg.promote(number)
        return None
    _, answer = promoter(reg, number, server=cfg.server, server_root=cfg.server_root)
    return None if answer is None else dict(json_safe(answer))


# --- keys, inputs, state --------------------------------------------------------------------


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(json_safe(obj), sort_keys=True).encode("utf-8")).hexdigest()


def loop_inputs(cfg: LoopConfig) -> dict[str, Any]:
    """What a refit depends on besides the champion: data hashes, settings, the carving."""
    inputs: dict[str, Any] = {
        "new_sha256": file_sha256(cfg.new_data),
        "replay_sha256": file_sha256(cfg.replay) if cfg.replay else None,
        "target": cfg.target,
        "refit": cfg.refit.model_dump(mode="json"),
        "new_test_size": cfg.new_test_size,
        "split_seed": cfg.split_seed if cfg.new_test_size is not None else None,
    }
    inputs["fingerprint"] = _digest(inputs)[:16]
    return inputs


def loop_key(inputs: Mapping[str, Any], champion: Any) -> tuple[str, int]:
    """The key of refitting ``champion`` on ``inputs``, and the number of the version refitted.

    When the champion is itself the challenger an earlier run made from the same inputs (that
    run promoted it), the key is that run's: the work is done, not to be repeated on top.
    """
    notes = champion.notes or {}
    if notes.get("loop_inputs") == inputs["fingerprint"] and notes.get("loop_key"):
        parent = notes.get("loop_parent")
        return str(notes["loop_key"]), int(parent) if parent is not None else champion.number
    key = _digest({"inputs": inputs["fingerprint"], "champion": champion.model_version})[:16]
    return key, champion.number


def find_version(reg: Any, key: str) -> Any:
    """The registry version made under loop ``key``, or None."""
    found = [v for v in reg.versions() if (v.notes or {}).get("loop_key") == key]
    return found[-1] if found else None


def state_root(cfg: LoopConfig) -> Path:
    """Where the loop keeps its state: ``state_dir``, else ``REGISTRY/loop`` (a folder registry;
    the config refuses another kind without ``state_dir``)."""
    return Path(cfg.state_dir) if cfg.state_dir else Path(cfg.registry) / "loop"


def check_files(cfg: LoopConfig) -> None:
    """Refuse a data file the config names that does not exist, naming the setting.

    Raises:
        DataError: the file of ``new_data``, ``replay``, ``old_test``, ``new_test`` or a
            monitor input is missing.
    """
    named = {
        "new_data": cfg.new_data,
        "replay": cfg.replay,
        "old_test": cfg.old_test,
        "new_test": cfg.new_test,
    }
    if cfg.when != "always":
        named.update({f"monitor.{k}": getattr(cfg.monitor, k) for k in ("reference", "current", "labels")})
    for setting, path in named.items():
        if path is not None and not Path(path).exists():
            raise DataError(
                "file not found", file=path, hint=f"Check {setting!r} in the loop config (relative to its folder)"
            )


def _as_config(config: LoopConfig | Mapping[str, Any] | str | os.PathLike[str]) -> LoopConfig:
    if isinstance(config, LoopConfig):
        return config
    if isinstance(config, Mapping):
        return make_loop_config(config)
    return load_loop_config(config)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def _read_state(folder: Path) -> dict[str, Any] | None:
    file = folder / STATE_FILE
    if not file.is_file():
        return None
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(
            f"cannot be read: {exc}", path=file, hint="Delete it; the loop finds its registered version again"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or not isinstance(state.get("steps"), dict):
        raise ArtifactError("is not a tunesmith loop state", path=file, hint="Delete it or choose another state_dir")
    return state


def _write_state(folder: Path, state: dict[str, Any]) -> None:
    state["updated"] = _now()
    atomic_write_json(folder / STATE_FILE, state)


def _clear_leftovers(folder: Path) -> None:
    """Remove what a killed save left: temporary siblings of the challenger folder, and a
    challenger folder that is no complete model (saves are atomic, so only a hand could make one)."""
    for tmp in folder.glob(f".{CHALLENGER_DIR}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    challenger = folder / CHALLENGER_DIR
    if challenger.is_dir() and not (challenger / "tunesmith.json").is_file():
        shutil.rmtree(challenger, ignore_errors=True)


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """One loop at a time per state folder (a second one fails fast instead of waiting)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArtifactError(
                "another tunesmith loop is running on this state folder",
                path=folder,
                hint="Let it finish (a scheduler should not start overlapping runs)",
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _saved_refit_info(folder: Path) -> dict[str, Any]:
    """The refit record a saved challenger carries (when a kill came before the state was written)."""
    try:
        info = json.loads((folder / "tunesmith.json").read_text(encoding="utf-8")).get("refit")
    except (OSError, ValueError, AttributeError):
        return {}
    return info if isinstance(info, dict) else {}


def _summary(info: Mapping[str, Any]) -> dict[str, Any]:
    plan = info.get("plan") or {}
    return {
        "method": plan.get("method") if isinstance(plan, Mapping) else None,
        "rows": info.get("rows"),
        "alpha": info.get("alpha"),
        "seconds": info.get("seconds"),
    }


def _described(summary: Mapping[str, Any]) -> str:
    """`` (refit: method auto, alpha 0.5, 1.2 s)``, or nothing when the refit recorded nothing."""
    parts = [f"method {summary['method']}"] if summary.get("method") else []
    for name, unit, fmt in (("alpha", "alpha ", "g"), ("seconds", "", ".1f")):
        value = summary.get(name)
        if isinstance(value, (int, float)):
            parts.append(f"{unit}{value:{fmt}}" + (" s" if name == "seconds" else ""))
    return f" (refit: {', '.join(parts)})" if parts else ""


def _result(state: Mapping[str, Any], folder: Path, *, repeated: bool, done: list[str]) -> LoopResult:
    steps = state.get("steps") or {}
    register = steps.get("register") or {}
    promote = steps.get("promote") or {}
    return LoopResult(
        outcome=str(state.get("outcome")),
        key=str(state["key"]),
        repeated=repeated,
        champion=(state.get("champion") or {}).get("number"),
        version=register.get("version"),
        state_path=folder / STATE_FILE,
        steps=done,
        decision=steps.get("gate"),
        monitor=steps.get("monitor"),
        refit=steps.get("refit"),
        server=promote.get("server"),
    )


class _Work:
    """What the steps share within one run, made only when a step needs it: the champion
    loaded, its target, the split of the new data."""

    def __init__(self, cfg: LoopConfig, reg: Any, champion: Any, *, recommender: bool = False) -> None:
        self.cfg, self.reg, self.champion = cfg, reg, champion
        self.recommender = recommender
        self._model: Any = None
        self._split: tuple[Any, Any] | None = None

    def model(self) -> Any:
        if self._model is None:
            self._model = load(self.champion.path)
        return self._model

    def target(self, state: dict[str, Any]) -> str | None:
        """The label column: the config's, the one recorded for this key, or the champion's.

        A recommender needs none: without one, the column its fit chose decides positives.
        """
        found = self.cfg.target or state.get("target")
        if self.recommender:
            return str(found) if found else None
        if not found:
            model = self.model()
            schema = getattr(model, "schema_", None) or getattr(getattr(model, "base", None), "schema_", None)
            found = getattr(schema, "target", None)
        if not found:
            raise ConfigError("name the label column of the new data", key="target")
        state["target"] = str(found)
        return str(found)

    def split(self, target: str | None) -> tuple[Any, Any]:
        """(rows to refit on, new test rows): the config's files, or ``new_test_size`` of the new
        rows held out with ``split_seed`` (the same rows on every rerun, never refitted on)."""
        if self._split is None:
            cfg = self.cfg
            if cfg.new_test is not None:
                self._split = (cfg.new_data, cfg.new_test)
            else:
                frame = read_table(cfg.new_data)
                assert cfg.new_test_size is not None and target is not None
                train, test = hold_out(frame, cfg.new_test_size, stratify=target, seed=cfg.split_seed)
                if len(test) < MIN_TEST_ROWS:
                    raise DataError(
                        f"new_test_size={cfg.new_test_size:g} holds out {len(test)} of {len(frame)} new rows; "
                        f"the gate needs at least {MIN_TEST_ROWS}",
                        file=cfg.new_data,
                        hint="Raise new_test_size, wait for more new rows, or give a new_test file",
                    )
                self._split = (train, test)
        return self._split
