"""fit(..., resume=RUN): a fit killed part-way continues from its run folder to the same weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from tests.train.test_checkpoint import KillAt, Killed
from tunesmith import FineTuner
from tunesmith.errors import ArtifactError, ConfigError


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return model.state_dict()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _only_run(runs: Path) -> Path:
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    return run


@pytest.fixture
def text_params(fast_params: dict) -> dict[str, Any]:
    return {**fast_params, "checkpoint_every_steps": 2, "dropout": 0.2, "ema_decay": 0.9, "baselines": False}


def test_a_killed_text_fit_resumes_to_the_same_weights(reviews: pd.DataFrame, text_params: dict) -> None:
    runs = Path(text_params["runs_dir"])
    plain = FineTuner(**{**text_params, "runs_dir": str(runs / "plain")}).fit(reviews, target="label")
    killed_params = {**text_params, "runs_dir": str(runs / "killed")}
    with pytest.raises(Killed):
        FineTuner(**killed_params).fit(reviews, target="label", callbacks=[KillAt(7)])
    run = _only_run(runs / "killed")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000000004", "step-000000005"]
    resumed = FineTuner(**killed_params).fit(reviews, target="label", resume=run)
    assert _same(_state(plain.model_), _state(resumed.model_))
    assert [h["train_loss"] for h in resumed.history_] == [h["train_loss"] for h in plain.history_]
    np.testing.assert_array_equal(plain.predict_proba(reviews), resumed.predict_proba(reviews))
    # The same folder holds the whole run: one log line per epoch, and no checkpoints left behind.
    assert resumed.run_dir_ == run and not (run / "checkpoints").exists()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == len(plain.history_)


def test_resuming_with_other_settings_or_data_is_refused(reviews: pd.DataFrame, text_params: dict) -> None:
    with pytest.raises(Killed):
        FineTuner(**text_params).fit(reviews, target="label", callbacks=[KillAt(5)])
    run = _only_run(Path(text_params["runs_dir"]))
    with pytest.raises(ConfigError, match=r"settings differ from the run being resumed \(lr: 0.003 in the run, 0.01"):
        FineTuner(**{**text_params, "lr": 1e-2}).fit(reviews, target="label", resume=run)
    other = reviews.copy()
    other.loc[0, "label"] = "neg" if other.loc[0, "label"] == "pos" else "pos"
    with pytest.raises(ArtifactError, match="no checkpoint of this run can be resumed.*fingerprint differs"):
        FineTuner(**text_params).fit(other, target="label", resume=run)
    with pytest.raises(ArtifactError, match="holds no config.yaml"):
        FineTuner(**text_params).fit(reviews, target="label", resume=run / "checkpoints")


def test_a_killed_image_fit_resumes_to_the_same_weights(tmp_path: Path) -> None:
    from tests.estimators.test_image import FAST, stripes
    from tunesmith.estimators.image import ImageFineTuner

    x, y = stripes(120)
    # Augmentation and mixup draw at random in every batch: the resumed fit must draw the same.
    params = {**FAST, "epochs": 3, "batch_size": 16, "checkpoint_every_steps": 3, "num_threads": 1}
    params["augment"] = {"hflip": 0.5, "rotate": 10.0, "mixup": 0.2}
    plain = ImageFineTuner(**{**params, "runs_dir": str(tmp_path / "plain")}).fit(x, y)
    killed = {**params, "runs_dir": str(tmp_path / "killed")}
    with pytest.raises(Killed):
        ImageFineTuner(**killed).fit(x, y, callbacks=[KillAt(10)])
    run = _only_run(tmp_path / "killed")
    resumed = ImageFineTuner(**killed).fit(x, y, resume=run)
    assert _same(_state(plain.model_), _state(resumed.model_))
    assert [h["train_loss"] for h in resumed.history_] == [h["train_loss"] for h in plain.history_]


def test_a_killed_tabular_network_resumes_to_the_same_weights(tmp_path: Path) -> None:
    from tests.tabular.test_tabular import _synthetic
    from tunesmith.tabular import TabularFineTuner

    df = _synthetic(600, 0)
    params = {"model": "neural", "epochs": 6, "batch_size": 64, "progress": False, "checkpoint_every_steps": 4}
    plain = TabularFineTuner(**params, runs_dir=str(tmp_path / "plain")).fit(df, target="label")
    killed = {**params, "runs_dir": str(tmp_path / "killed")}
    with pytest.raises(Killed):
        TabularFineTuner(**killed).fit(df, target="label", callbacks=[KillAt(17)])
    run = _only_run(tmp_path / "killed")
    assert (run / "checkpoints" / "neural").is_dir()
    resumed = TabularFineTuner(**killed).fit(df, target="label", resume=run)
    assert _same(_state(plain.net_), _state(resumed.net_))
    np.testing.assert_array_equal(plain.predict_proba(df), resumed.predict_proba(df))
    assert not (run / "checkpoints").exists()


def test_half_written_and_damaged_checkpoints_do_not_stop_a_resume(reviews: pd.DataFrame, text_params: dict) -> None:
    plain = FineTuner(**{**text_params, "runs_dir": str(Path(text_params["runs_dir"]) / "plain")})
    plain.fit(reviews, target="label")
    killed = {**text_params, "runs_dir": str(Path(text_params["runs_dir"]) / "killed")}
    with pytest.raises(Killed):
        FineTuner(**killed).fit(reviews, target="label", callbacks=[KillAt(9)])
    run = _only_run(Path(killed["runs_dir"]))
    newest = max((run / "checkpoints").iterdir())
    # A process killed while writing leaves a hidden folder with a cut-short tensors file...
    partial = run / "checkpoints" / ".step-000000010.tmp-abc"
    partial.mkdir()
    data = (newest / "state.safetensors").read_bytes()
    (partial / ".state.safetensors.x.tmp").write_bytes(data[: len(data) // 2])
    # ...and the newest checkpoint may be damaged (a copy of the run folder cut short).
    (newest / "state.safetensors").write_bytes(data[: len(data) // 2])
    resumed = FineTuner(**killed).fit(reviews, target="label", resume=run)
    assert _same(_state(plain.model_), _state(resumed.model_))
    assert [h["train_loss"] for h in resumed.history_] == [h["train_loss"] for h in plain.history_]
    # A finished run has nothing to resume.
    with pytest.raises(ArtifactError, match="this run finished"):
        FineTuner(**killed).fit(reviews, target="label", resume=run)


def test_an_edited_checkpoint_is_refused(reviews: pd.DataFrame, text_params: dict) -> None:
    import json

    with pytest.raises(Killed):
        FineTuner(**text_params).fit(reviews, target="label", callbacks=[KillAt(3)])
    run = _only_run(Path(text_params["runs_dir"]))
    (only,) = (run / "checkpoints").iterdir()
    meta = json.loads((only / "checkpoint.json").read_text())
    meta["optimizer"]["param_groups"][0]["lr"] = 10.0
    (only / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="checkpoint.json does not match its own SHA-256"):
        FineTuner(**text_params).fit(reviews, target="label", resume=run)
