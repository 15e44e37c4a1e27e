"""``tunesmith refit`` and ``tunesmith loop``: the library's refit and loop, one line per error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.refit.test_loop import make_setup, period
from tunesmith import TabularFineTuner
from tunesmith.cli import main
from tunesmith.kinds import load
from tunesmith.runs.fingerprint import model_version
from tunesmith.runs.versions import ModelRegistry


def run(args: list[str]) -> int:
    """``main(args)``'s exit status (0 when it returns)."""
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def accuracy(model: object, frame) -> float:  # type: ignore[no-untyped-def]
    pred = np.asarray(model.predict(frame.drop(columns=["label"])))  # type: ignore[attr-defined]
    return float((pred == frame["label"].to_numpy()).mean())


def test_refit_continues_a_model_on_new_data_and_saves_the_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = period(300, 0, shift=0.0)
    old.to_csv(tmp_path / "old.csv", index=False)
    period(300, 2, shift=2.5).to_csv(tmp_path / "new.csv", index=False)
    champion = TabularFineTuner(model="lightgbm", n_estimators=60, progress=False, runs_dir="").fit(old, target="label")
    folder = champion.save(tmp_path / "model")
    before = model_version(folder)
    args = ["refit", str(folder), str(tmp_path / "new.csv"), "--replay", str(tmp_path / "old.csv")]
    code = run([*args, "-o", str(tmp_path / "new_model"), "--method", "replay", "valid_size=0.2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "refit: method replay, 240 new + 240 replayed rows trained, 60 new + 60 old held out" in out
    assert f"saved to {tmp_path / 'new_model'}" in out
    meta = json.loads((tmp_path / "new_model" / "tunesmith.json").read_text(encoding="utf-8"))
    assert meta["refit"]["plan"]["method"] == "replay" and meta["refit"]["rows"]["replay_train"] == 240
    assert model_version(folder) == before  # the champion's folder is left as it was
    new_test, old_test = period(200, 3, shift=2.5), period(200, 1, shift=0.0)
    challenger = load(tmp_path / "new_model")
    assert accuracy(challenger, new_test) > accuracy(champion, new_test) + 0.1
    assert accuracy(challenger, old_test) > 0.85


def test_refit_errors_are_one_line_without_a_stack_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = period(200, 0, shift=0.0)
    model = TabularFineTuner(model="lightgbm", n_estimators=20, progress=False, runs_dir="").fit(data, target="label")
    folder = model.save(tmp_path / "model")
    data.assign(label=np.where(data["label"] == "yes", "maybe", "no")).to_csv(tmp_path / "new.csv", index=False)
    new = str(tmp_path / "new.csv")
    assert run(["refit", str(folder), new, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "'maybe' the model never saw" in err and "Traceback" not in err
    assert run(["refit", str(folder), new, "-o", str(tmp_path / "out"), "metod=naive"]) == 2
    assert "setting 'metod': unknown setting; did you mean 'method'?" in capsys.readouterr().err
    assert run(["refit", str(folder), str(tmp_path / "none.csv"), "-o", str(tmp_path / "out")]) == 2
    assert "none.csv" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_loop_promotes_then_does_nothing_and_exits_3_on_rejection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_setup(tmp_path / "good")
    assert run(["loop", str(config)]) == 0
    out = capsys.readouterr().out
    assert "refitting version 1" in out and "promoted version 2" in out and "new_test (100 rows)" in out
    assert run(["loop", str(config), "--json"]) == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out and '"repeated": true' in out
    rejected = make_setup(tmp_path / "bad", shift=0.0, margin=0.01)
    assert run(["loop", str(rejected)]) == 3
    assert "rejected version 2" in capsys.readouterr().out
    assert ModelRegistry(tmp_path / "bad" / "registry").get(2).status == "rejected"


def test_loop_with_an_unreachable_server_keeps_the_champion_and_a_rerun_promotes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_setup(tmp_path, server="http://127.0.0.1:9")
    assert run(["loop", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: setting 'server': cannot reach http://127.0.0.1:9/admin/reload")
    reg = ModelRegistry(tmp_path / "registry")
    assert reg.champion().number == 1 and reg.get(2).notes["gate"]["accepted"]  # type: ignore[union-attr]
    config.write_text(config.read_text(encoding="utf-8").replace("server: http://127.0.0.1:9\n", ""), encoding="utf-8")
    assert run(["loop", str(config)]) == 0
    out = capsys.readouterr().out
    assert "promoting version 2" in out and "refitting" not in out and "gating" not in out
    assert reg.champion().number == 2 and len(reg.versions()) == 2  # type: ignore[union-attr]


def test_loop_refuses_a_missing_config_and_a_bad_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["loop", str(tmp_path / "none.yaml")]) == 2
    assert "loop config file" in capsys.readouterr().err
    config = make_setup(tmp_path, gate_margin=0.1)
    assert run(["loop", str(config)]) == 2
    err = capsys.readouterr().err
    assert "setting 'gate_margin': unknown setting in loop.yaml" in err and "Traceback" not in err


def test_refit_of_an_adapter_store_takes_its_shared_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.personalize.test_refit import OLD_USERS, ratings
    from tunesmith import FineTuner
    from tunesmith.personalize.personalizer import Personalizer

    params = {"backbone": "tiny-text", "epochs": 2, "batch_size": 16, "lr": 3e-3, "max_length": 16}
    shared = {f"s{i}": i % 4 == 0 for i in range(8)}
    base = FineTuner(**params, progress=False, runs_dir="", num_threads=1, baselines=False)
    base.fit(ratings(shared, 12, seed=0)[["text", "label"]], target="label").save(tmp_path / "model")
    store = tmp_path / "store"
    Personalizer(tmp_path / "model", store, user_column="user", time_column="t", steps=50, progress=False).fit(
        ratings(OLD_USERS, 20, seed=1)
    )
    ratings({"u1": True}, 20, seed=2, start=20).to_csv(tmp_path / "new.csv", index=False)
    args = ["refit", str(store), str(tmp_path / "new.csv"), "-o", str(tmp_path / "store_2")]
    assert run(args) == 2
    err = capsys.readouterr().err
    assert "setting 'base'" in err and "adapter store" in err and "--base MODEL" in err and "Traceback" not in err
    assert run([*args, "--base", str(tmp_path / "model"), "epochs=5"]) == 0, capsys.readouterr().err
    assert f"saved to {tmp_path / 'store_2'}" in capsys.readouterr().out
    meta = json.loads((tmp_path / "store_2" / "personalize.json").read_text(encoding="utf-8"))
    assert meta["refit"]["users"]["retrained"] == ["u1"]
    assert (store / "personalize.json").is_file() and "refit" not in json.loads(
        (store / "personalize.json").read_text()
    )


def test_refit_refuses_an_existing_output_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import tunesmith.kinds

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded to train")

    (tmp_path / "out").mkdir()
    (tmp_path / "new.csv").write_text("x1,label\n1,yes\n", encoding="utf-8")
    monkeypatch.setattr(tunesmith.kinds, "load", no_training)
    assert run(["refit", str(tmp_path / "model"), str(tmp_path / "new.csv"), "-o", str(tmp_path / "out")]) == 2
    assert "out: already exists. Pass --overwrite or choose another folder" in capsys.readouterr().err
