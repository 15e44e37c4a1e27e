"""The refit loop: monitor, refit the champion, register, gate, promote; once per key, safe to kill."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from tunesmith import TabularFineTuner
from tunesmith.errors import ArtifactError, ConfigError, DataError
from tunesmith.refit import load_loop_config, loop, run_loop
from tunesmith.runs.versions import ModelRegistry


def period(n: int, seed: int, *, shift: float) -> pd.DataFrame:
    """One concept, two periods: x2 moves by ``shift`` into a region where the label turns on x2."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n) + shift
    logit = 3 * x1 + 4 * np.sin(1.5 * x2)
    y = np.where(logit + rng.normal(scale=0.3, size=n) > 0, "yes", "no")
    return pd.DataFrame({"x1": x1, "x2": x2, "label": y})


def make_setup(tmp: Path, *, shift: float = 2.5, **settings: Any) -> Path:
    """A registry whose champion knows the old period, the data files and a loop.yaml (relative paths)."""
    tmp.mkdir(parents=True, exist_ok=True)
    old = period(300, 0, shift=0.0)
    old.to_csv(tmp / "old_train.csv", index=False)
    period(200, 1, shift=0.0).to_csv(tmp / "old_test.csv", index=False)
    period(400, 2, shift=shift).to_csv(tmp / "new.csv", index=False)
    champion = TabularFineTuner(model="lightgbm", n_estimators=60, progress=False, runs_dir="").fit(old, target="label")
    reg = ModelRegistry(tmp / "registry")
    reg.promote(reg.register(champion.save(tmp / "champion")).number)
    config = {
        "registry": "registry",
        "new_data": "new.csv",
        "replay": "old_train.csv",
        "old_test": "old_test.csv",
        "new_test_size": 0.25,
        "margin": 0.03,
        **settings,
    }
    path = tmp / "loop.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_the_loop_promotes_a_better_challenger_and_a_rerun_does_nothing(tmp_path: Path) -> None:
    config = make_setup(tmp_path)
    lines: list[str] = []
    result = run_loop(config, log=lines.append)
    assert result.outcome == "promoted" and result.exit_code == 0, result.decision
    assert result.steps == ["refit", "register", "gate", "promote"] and not result.repeated
    reg = ModelRegistry(tmp_path / "registry")
    champion = reg.champion()
    assert champion is not None and champion.number == result.version == 2 and result.champion == 1
    assert champion.notes["loop_key"] == result.key and champion.notes["loop_parent"] == 1
    assert champion.notes["gate"]["accepted"] and champion.notes["gate"]["new_test"]["gain"] > 0.1
    # 100 of the 400 new rows were held out for the gate and never refitted on.
    rows = result.refit["rows"] if result.refit else {}
    assert rows["new_train"] + rows["new_valid"] == 300 and champion.notes["gate"]["new_test"]["rows"] == 100
    state = json.loads(result.state_path.read_text(encoding="utf-8"))
    assert state["outcome"] == "promoted" and set(state["steps"]) == {"refit", "register", "gate", "promote"}
    assert not (result.state_path.parent / "challenger").exists()  # the registry holds the copy
    assert any(line.startswith("refitting version 1") for line in lines)

    # The champion is now this run's challenger: the same inputs are recognised, nothing is redone.
    again = run_loop(config)
    assert again.repeated and again.steps == [] and again.key == result.key
    assert again.outcome == "promoted" and again.version == 2
    assert [v.number for v in reg.versions()] == [1, 2]


def test_a_challenger_no_better_on_new_data_is_rejected_with_exit_code_3(tmp_path: Path) -> None:
    # "New" data from the old period: the refit cannot beat the champion on it.
    config = make_setup(tmp_path, shift=0.0, margin=0.01)
    result = run_loop(config)
    assert result.outcome == "rejected" and result.exit_code == 3
    assert result.decision is not None and result.decision["reasons"][0].startswith("not better on the new test split")
    reg = ModelRegistry(tmp_path / "registry")
    assert reg.get(2).status == "rejected" and reg.champion().number == 1  # type: ignore[union-attr]
    again = run_loop(config)
    assert again.repeated and again.outcome == "rejected" and again.exit_code == 3
    assert len(reg.versions()) == 2


@pytest.mark.parametrize("kill", ["_register_step", "_gate_step", "_promote_step"])
def test_a_run_killed_after_registering_finishes_on_rerun_without_registering_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill: str
) -> None:
    config = make_setup(tmp_path)
    real = getattr(loop, kill)
    refits: list[int] = []
    real_refit = loop._refit_step

    def counted_refit(*args: Any, **kwargs: Any) -> Any:
        refits.append(1)
        return real_refit(*args, **kwargs)

    def killed(*args: Any, **kwargs: Any) -> Any:
        if kill == "_register_step":
            real(*args, **kwargs)  # registered, then killed before the state records it
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_refit_step", counted_refit)
    monkeypatch.setattr(loop, kill, killed)
    with pytest.raises(KeyboardInterrupt):
        run_loop(config)
    reg = ModelRegistry(tmp_path / "registry")
    assert [v.status for v in reg.versions()] == ["champion", "candidate"]
    monkeypatch.setattr(loop, kill, real)
    result = run_loop(config)
    assert result.outcome == "promoted" and result.version == 2
    assert "refit" not in result.steps and "register" not in result.steps and result.steps[-1] == "promote"
    assert [v.number for v in reg.versions()] == [1, 2] and len(refits) == 1
    assert ("gate" in result.steps) == (kill != "_promote_step")  # a recorded decision is not judged again


def test_when_drift_refits_only_once_the_monitor_sees_drift(tmp_path: Path) -> None:
    settings = {"when": "drift", "monitor": {"settings": {"window_rows": 200, "embedding_rows": 0}}}
    config = make_setup(tmp_path, shift=0.0, **settings)
    skipped = run_loop(config)
    assert skipped.outcome == "skipped" and skipped.exit_code == 0 and skipped.steps == ["monitor"]
    assert skipped.monitor is not None and skipped.monitor["status"] == "ok"
    assert len(ModelRegistry(tmp_path / "registry").versions()) == 1
    period(400, 2, shift=2.5).to_csv(tmp_path / "new.csv", index=False)  # the data moved
    result = run_loop(config)
    assert result.monitor is not None and result.monitor["status"] in ("drift", "alert")
    assert result.steps[0] == "monitor" and result.outcome == "promoted", result.decision


def test_a_bad_config_names_the_key(tmp_path: Path) -> None:
    config = make_setup(tmp_path, refit={"metod": "naive"})
    with pytest.raises(
        ConfigError, match=r"setting 'refit\.metod': unknown setting in loop\.yaml; did you mean 'refit\.method'"
    ):
        run_loop(config)
    config.write_text(config.read_text(encoding="utf-8").replace("new_data:", "new_dta:"), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"setting 'new_dta'.*did you mean 'new_data'"):
        load_loop_config(config)
    base = load_loop_config(make_setup(tmp_path / "good")).model_dump()
    with pytest.raises(ConfigError, match=r"setting 'refit\.method': Input should be 'auto'"):
        run_loop({**base, "refit": {"method": "magic"}})
    with pytest.raises(ConfigError, match=r"setting 'new_test': .*exactly one, not both"):
        run_loop({**base, "new_test": "x.csv"})
    with pytest.raises(ConfigError, match=r"setting 'old_test': is required"):
        run_loop({k: v for k, v in base.items() if k != "old_test"})
    with pytest.raises(ConfigError, match="setting 'server': promoting into a running server needs a promoter"):
        run_loop({**base, "server": "http://127.0.0.1:1"})
    with pytest.raises(ConfigError, match="setting 'state_dir': a registry that is not a local folder"):
        run_loop({**base, "registry": "mlflow:sqlite:///mlflow.db#reviews"})


def test_missing_files_small_test_splits_and_registries_without_a_champion_are_clear_errors(tmp_path: Path) -> None:
    config = make_setup(tmp_path)
    base = load_loop_config(config).model_dump()
    with pytest.raises(DataError, match=r"new_test_size=0\.01 holds out 4 of 400 new rows; the gate needs at least 30"):
        run_loop({**base, "new_test_size": 0.01})
    with pytest.raises(ArtifactError, match="has no champion to refit"):
        run_loop({**base, "registry": str(tmp_path / "empty")})
    (tmp_path / "new.csv").unlink()
    with pytest.raises(DataError, match=r"new\.csv: file not found\. Check 'new_data' in the loop config"):
        run_loop(config)


def test_the_examples_are_a_valid_config_and_a_cronjob(tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parents[2] / "examples" / "loop"
    cfg = load_loop_config(examples / "loop.yaml")
    assert cfg.when == "drift" and cfg.refit.method == "auto" and cfg.new_test_size == 0.2
    assert Path(cfg.new_data) == examples / "data" / "new.csv"  # read from the config's folder
    job = yaml.safe_load((examples / "cronjob.yaml").read_text(encoding="utf-8"))
    spec = job["spec"]["jobTemplate"]["spec"]
    assert job["kind"] == "CronJob" and job["spec"]["concurrencyPolicy"] == "Forbid"
    assert spec["template"]["spec"]["containers"][0]["args"][:2] == ["tunesmith", "loop"]
    assert [r["onExitCodes"]["values"] for r in spec["podFailurePolicy"]["rules"]] == [[3], [2]]
    line = next(ln for ln in (examples / "crontab").read_text(encoding="utf-8").splitlines() if not ln.startswith("#"))
    assert len(line.split()[:5]) == 5 and "tunesmith loop loop.yaml" in line


def test_a_run_killed_after_the_save_keeps_the_refit_record_and_both_data_hashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_setup(tmp_path)
    real = loop._refit_step

    def saved_then_killed(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)  # the challenger is saved, the state never hears of it
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_refit_step", saved_then_killed)
    with pytest.raises(KeyboardInterrupt):
        run_loop(config)
    monkeypatch.setattr(loop, "_refit_step", real)
    result = run_loop(config)
    assert result.outcome == "promoted" and result.steps == ["register", "gate", "promote"]
    # The run record still holds the refit's record, read back from the saved challenger.
    state = json.loads(result.state_path.read_text(encoding="utf-8"))
    assert result.refit is not None and result.refit["plan"]["method"] == "auto"
    assert state["steps"]["refit"]["rows"]["new_train"] + state["steps"]["refit"]["rows"]["new_valid"] == 300
    assert set(state["steps"]["gate"]["fingerprints"]) == {"new_test", "old_test"}
    notes = ModelRegistry(tmp_path / "registry").get(2).notes
    assert notes["refit"]["method"] == "auto" and notes["refit"]["rows"] == result.refit["rows"]
    assert notes["data"] == {
        "new_sha256": state["inputs"]["new_sha256"],
        "replay_sha256": state["inputs"]["replay_sha256"],
    }
    assert len(notes["data"]["new_sha256"]) == 64 and notes["data"]["new_sha256"] != notes["data"]["replay_sha256"]


def test_a_gate_killed_before_its_record_never_leaves_a_promotable_candidate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tunesmith.serve.swap import promote

    config = make_setup(tmp_path, shift=0.0, margin=0.01)
    real = ModelRegistry.annotate

    def killed(self: ModelRegistry, number: int, **notes: Any) -> Any:
        raise KeyboardInterrupt  # the decision is made, its record never written

    monkeypatch.setattr(ModelRegistry, "annotate", killed)
    with pytest.raises(KeyboardInterrupt):
        run_loop(config)
    reg = ModelRegistry(tmp_path / "registry")
    assert reg.get(2).status == "rejected" and "gate" not in reg.get(2).notes
    with pytest.raises(ArtifactError, match="has no candidate version to promote"):
        promote(reg)  # `tunesmith promote registry/`: the newest candidate
    monkeypatch.setattr(ModelRegistry, "annotate", real)
    result = run_loop(config)
    assert result.outcome == "rejected" and result.exit_code == 3 and "gate" in result.steps
    assert reg.get(2).notes["gate"]["accepted"] is False and reg.champion().number == 1  # type: ignore[union-attr]


def test_a_version_rejected_by_hand_is_never_promoted_by_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_setup(tmp_path)
    real = loop._gate_step

    def killed(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_gate_step", killed)
    with pytest.raises(KeyboardInterrupt):
        run_loop(config)
    monkeypatch.setattr(loop, "_gate_step", real)
    reg = ModelRegistry(tmp_path / "registry")
    reg.reject(2, "looked wrong to the on-call engineer")
    lines: list[str] = []
    result = run_loop(config, log=lines.append)
    # The gate passes it, the registry's mark wins: rejected, exit 3, the champion stays.
    assert result.decision is not None and result.decision["accepted"]
    assert result.outcome == "rejected" and result.exit_code == 3 and "promote" not in result.steps
    assert reg.champion().number == 1 and reg.get(2).status == "rejected"  # type: ignore[union-attr]
    assert lines[-1] == "version 2 rejected: marked rejected in the registry: looked wrong to the on-call engineer"
    assert run_loop(config).repeated


def test_a_registry_of_recommenders_needs_a_later_log_as_new_test(tmp_path: Path) -> None:
    from tests.runs.test_versions import fake_model

    config = make_setup(tmp_path)  # carves new_test_size: refused for interaction logs
    (tmp_path / "registry").rename(tmp_path / "tabular")
    reg = ModelRegistry(tmp_path / "registry")
    reg.promote(reg.register(fake_model(tmp_path / "rec", b"w", kind="recommender")).number)
    with pytest.raises(ConfigError, match="needs new_test, an interaction log later than new_data"):
        run_loop(config)
    assert not (tmp_path / "registry" / "loop").exists() and len(reg.versions()) == 1


def test_a_relative_mlflow_database_is_read_from_the_config_folder(tmp_path: Path) -> None:
    from tunesmith.refit import make_loop_config

    settings = {"new_data": "new.csv", "old_test": "old.csv", "new_test_size": 0.2, "state_dir": "state"}
    cfg = make_loop_config({**settings, "registry": "mlflow:sqlite:///db/mlflow.db#reviews"}, base=tmp_path)
    assert cfg.registry == f"mlflow:sqlite:///{tmp_path.as_posix()}/db/mlflow.db#reviews"
    absolute = make_loop_config({**settings, "registry": "mlflow:sqlite:////srv/mlflow.db#r"}, base=tmp_path)
    assert absolute.registry == "mlflow:sqlite:////srv/mlflow.db#r"
    server = make_loop_config({**settings, "registry": "mlflow:http://mlflow:5000#r"}, base=tmp_path)
    assert server.registry == "mlflow:http://mlflow:5000#r" and cfg.state_dir == str(tmp_path / "state")
