"""The MLflow registry backend: the local registry's operations against a local MLflow database."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mlflow")

import tunesmith
from tests.conftest import make_reviews
from tests.runs.test_versions import fake_model
from tunesmith import FineTuner
from tunesmith.errors import ArtifactError, ConfigError
from tunesmith.runs.fingerprint import model_version
from tunesmith.runs.mlflow_registry import ALIASES_TAG, MlflowRegistry, open_registry, parse_location
from tunesmith.runs.versions import ModelRegistry
from tunesmith.serve.swap import promote, rollback

TEXTS = ["great fun movie", "awful boring film", "a good story", "dull and bad"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow database for the module (creating its tables takes a second); each test
    registers its own model name in it."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two tiny text models that differ in their weights (one epoch each)."""
    root = tmp_path_factory.mktemp("models")
    params = {"backbone": "tiny-text", "epochs": 1, "batch_size": 8, "lr": 3e-3, "max_length": 16}
    params |= {"progress": False, "runs_dir": str(root / "runs"), "num_threads": 1}
    out = []
    for seed in (0, 1):
        model = FineTuner(**params, seed=seed).fit(make_reviews(16, seed=seed), target="label")
        out.append(model.save(root / f"m{seed}"))
    return out


@pytest.fixture
def reg(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> MlflowRegistry:
    return MlflowRegistry(request.node.name, tracking_uri=store, cache_dir=tmp_path / "cache")


def test_versions_are_mlflow_model_versions_and_promotion_keeps_a_way_back(
    reg: MlflowRegistry, models: list[Path], store: str, tmp_path: Path
) -> None:
    one = reg.register(models[0], notes={"data": "2015", "rows": 16})
    two = reg.register(models[1])
    assert (one.number, two.number) == (1, 2)
    assert one.model_version == model_version(models[0]) != two.model_version
    assert one.notes == {"data": "2015", "rows": 16} and one.status == "candidate"
    assert reg.champion() is None and reg.identity() == {"kind": "text", "task": "binary", "labels": ["neg", "pos"]}

    reg.promote(1)
    reg.promote(2)
    # The champion is MLflow's own alias, so any MLflow client finds it.
    assert reg.client.get_model_version_by_alias(reg.name, "champion").version in ("2", 2)
    assert [v.status for v in reg.versions()] == ["retired", "champion"]
    back = reg.rollback()
    assert back.number == 1 and reg.champion().number == 1
    assert reg.client.get_model_version_by_alias(reg.name, "champion").version in ("1", 1)
    assert [v.status for v in reg.versions()] == ["champion", "retired"]
    with pytest.raises(ArtifactError, match="no earlier champion"):
        reg.rollback()

    # Another machine (an empty cache) downloads the version: the same bytes, the same predictions.
    elsewhere = MlflowRegistry(reg.name, tracking_uri=store, cache_dir=tmp_path / "other-cache")
    got = elsewhere.get(2)
    assert got.path.is_relative_to(tmp_path / "other-cache") and got.model_version == two.model_version
    assert (got.path / "model.safetensors").read_bytes() == (models[1] / "model.safetensors").read_bytes()
    expected = tunesmith.load(models[1]).predict_proba(TEXTS)
    np.testing.assert_allclose(tunesmith.load(got.path).predict_proba(TEXTS), expected, atol=1e-6)


def test_a_rejected_version_is_kept_never_promoted_and_never_rolled_back_to(
    reg: MlflowRegistry, models: list[Path]
) -> None:
    for folder in (models[0], models[1], models[0]):
        reg.register(folder)
    reg.promote(1)
    with pytest.raises(ArtifactError, match="version 1 serves now"):
        reg.reject(1, "no")
    reg.promote(2)
    reg.promote(3)
    rejected = reg.reject(2, "lost 2.3 points on the old test split")
    assert rejected.status == "rejected" and rejected.notes["rejected_because"].startswith("lost 2.3")
    with pytest.raises(ArtifactError, match="rejected \\(lost 2.3 points"):
        reg.promote(2)
    assert reg.rollback().number == 1  # 2 is skipped
    assert [v.status for v in reg.versions()] == ["champion", "rejected", "retired"]
    reg.annotate(3, gate={"accepted": False, "gain": -0.02})
    assert reg.get(3).notes["gate"] == {"accepted": False, "gain": -0.02}


def test_a_registry_holds_one_model_and_refuses_others(
    reg: MlflowRegistry, models: list[Path], store: str, tmp_path: Path
) -> None:
    reg.register(models[0])
    with pytest.raises(
        ArtifactError, match="labels: \\['neg', 'pos'\\]\\); this model's labels is \\['a', 'b', 'c'\\]"
    ):
        reg.register(fake_model(tmp_path / "m3", b"three", labels=["a", "b", "c"]))
    with pytest.raises(ArtifactError, match="kind: 'text'\\); this model's kind is 'tabular'"):
        reg.register(fake_model(tmp_path / "m4", b"four", kind="tabular"))
    assert [v.number for v in reg.versions()] == [1]
    # A registered model that another tool filled is not taken over.
    client = reg.client
    client.create_registered_model("someone-else")
    run = client.create_run(client.create_experiment("other", artifact_location=(tmp_path / "art").as_uri()))
    client.create_model_version("someone-else", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    with pytest.raises(ArtifactError, match="tunesmith did not register"):
        MlflowRegistry("someone-else", tracking_uri=store, cache_dir=tmp_path / "c")
    with pytest.raises(ArtifactError, match="names an MLflow registry, not a folder"):
        ModelRegistry(f"mlflow:{store}#x")


def test_a_changed_artifact_store_is_never_served(
    reg: MlflowRegistry, models: list[Path], store: str, tmp_path: Path
) -> None:
    weights = reg.register(models[0]).model_version
    run_id = reg.client.get_model_version(reg.name, "1").run_id
    stored = next((Path(store[len("sqlite:///") :]).parent / "mlartifacts").glob(f"{run_id}/**/model.safetensors"))
    refused = f"artifacts differ from what was registered \\(weights {{}}, registered {weights}\\)"
    # Metadata changed, weights not: the folder's digest catches it.
    meta = stored.parent / "tunesmith.json"
    meta.write_text(meta.read_text().replace('"neg"', '"neg" '))
    elsewhere = MlflowRegistry(reg.name, tracking_uri=store, cache_dir=tmp_path / "other-cache")
    with pytest.raises(ArtifactError, match=refused.format(weights)):
        elsewhere.promote(1)
    stored.write_bytes(stored.read_bytes()[:-8] + b"tampered")
    with pytest.raises(ArtifactError, match=refused.format("(?!" + weights + ")\\w+")):
        elsewhere.get(1)
    assert elsewhere.champion() is None and not list((tmp_path / "other-cache").rglob("v0001*"))


def test_the_champion_moves_only_once_the_server_switched_and_survives_a_crash(
    reg: MlflowRegistry, models: list[Path]
) -> None:
    reg.register(models[0])
    reg.register(models[1])
    reg.promote(1)

    def server_refuses(version: object) -> None:
        raise RuntimeError("cannot load")

    with pytest.raises(RuntimeError):
        reg.promote(2, before_commit=server_refuses)
    assert reg.aliases() == {"champion": 1, "history": [], "served": [1]}

    # A crash after the intent, before the alias moved: still the old champion.
    before = {"champion": 1, "history": [], "served": [1]}
    after = {"champion": 2, "history": [1], "served": [1, 2]}
    reg.client.set_registered_model_tag(reg.name, ALIASES_TAG, json.dumps({**before, "next": after}))
    assert reg.aliases() == before
    # A crash after the alias moved, before the final state: the new champion, with its history.
    reg.client.set_registered_model_alias(reg.name, "champion", "2")
    assert reg.aliases() == after and reg.rollback().number == 1
    # The alias moved in MLflow's UI: that version serves, the one before can be rolled back to.
    reg.client.set_registered_model_alias(reg.name, "champion", "2")
    assert reg.aliases() == {"champion": 2, "history": [1], "served": [1, 2]}
    assert [v.status for v in reg.versions()] == ["retired", "champion"]


def test_swap_and_the_command_line_take_an_mlflow_location(
    models: list[Path], store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from tunesmith.cli import app

    monkeypatch.setenv("TUNESMITH_MLFLOW_CACHE", str(tmp_path / "cache"))
    location = f"mlflow:{store}#cli-model"
    run = CliRunner().invoke
    out = run(app, ["register", location, str(models[0]), "--note", "data=2015"])
    assert out.exit_code == 0 and "registered version 1" in out.output, out.output
    assert run(app, ["register", location, str(models[1])]).exit_code == 0
    out = run(app, ["promote", location])  # the newest candidate
    assert out.exit_code == 0 and "version 2" in out.output, out.output
    out = run(app, ["versions", location])
    assert "champion" in out.output and "candidate" in out.output, out.output
    v, answer = promote(location, 1)
    assert v.number == 1 and answer is None and v.path.is_relative_to(tmp_path / "cache")
    out = run(app, ["rollback", location])
    assert out.exit_code == 0 and "version 2 " in out.output, out.output
    reg = open_registry(location)
    assert reg.champion().number == 2 and reg.get(1).notes == {"data": "2015"}
    with pytest.raises(ArtifactError, match="cli-model: has no earlier champion"):
        rollback(reg)


def test_without_mlflow_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    with pytest.raises(
        ConfigError, match="MLflow registry needs the mlflow extra. pip install 'tunesmith\\[mlflow\\]'"
    ):
        open_registry("mlflow:sqlite:///mlflow.db#reviews")


def test_a_location_names_a_model() -> None:
    assert parse_location("mlflow:sqlite:///a/b.db#reviews") == ("sqlite:///a/b.db", "reviews")
    assert parse_location("mlflow:#reviews") == (None, "reviews")
    with pytest.raises(ConfigError, match="names no registered model.*mlflow:<tracking URI>#<model name>"):
        parse_location("mlflow:sqlite:///a/b.db")
    assert isinstance(open_registry("some/folder"), ModelRegistry)


def test_an_unsupported_tracking_uri_is_a_one_line_error(tmp_path: Path) -> None:
    from tunesmith.cli import main

    with pytest.raises(ArtifactError, match="mlflow:bogus://x#m: MLflow refused: .*unsupported URI 'bogus://x'"):
        open_registry("mlflow:bogus://x#m")
    with pytest.raises(SystemExit) as exc:
        main(["versions", "mlflow:bogus://x#m"])
    assert exc.value.code == 2


def test_the_refit_loop_runs_on_an_mlflow_registry_and_a_kill_registers_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from tests.refit.test_loop import make_setup
    from tunesmith.refit import loop, run_loop

    config = make_setup(tmp_path)
    monkeypatch.setenv("TUNESMITH_MLFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path / "registry")  # a scheduler's working directory: not the config's folder
    reg = MlflowRegistry("loop", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    reg.promote(reg.register(tmp_path / "champion").number)
    settings = yaml.safe_load(config.read_text(encoding="utf-8"))
    settings |= {"registry": "mlflow:sqlite:///mlflow.db#loop", "state_dir": "state"}  # read from the config's folder
    config.write_text(yaml.safe_dump(settings), encoding="utf-8")
    real = loop._register_step

    def registered_then_killed(*args: object, **kwargs: object) -> None:
        real(*args, **kwargs)  # type: ignore[arg-type]
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_register_step", registered_then_killed)
    with pytest.raises(KeyboardInterrupt):
        run_loop(config)
    monkeypatch.setattr(loop, "_register_step", real)
    result = run_loop(config)
    assert result.outcome == "promoted" and result.steps == ["gate", "promote"] and result.version == 2
    assert [(v.number, v.status) for v in reg.versions()] == [(1, "retired"), (2, "champion")]
    assert reg.get(2).notes["gate"]["accepted"] and (tmp_path / "state" / result.key / "state.json").is_file()
    assert not (tmp_path / "registry" / "mlflow.db").exists()
    assert run_loop(config).repeated


def test_a_local_mlflow_file_store_works_too(
    models: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MLflow 3 keeps its plain-folder store behind a switch; teams that still use one set it.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("TUNESMITH_MLFLOW_CACHE", str(tmp_path / "cache"))
    uri = (tmp_path / "mlruns").as_uri()
    # as a team with a file store runs it: MLflow's default store is that folder, not ./mlflow.db
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    reg = open_registry(f"mlflow:{uri}#reviews")
    assert isinstance(reg, MlflowRegistry)
    one, two = reg.register(models[0]), reg.register(models[1])
    reg.promote(one.number)
    reg.promote(two.number)
    assert reg.champion().model_version == model_version(models[1])
    assert reg.rollback().number == 1 and reg.champion().model_version == model_version(models[0])
    assert (tmp_path / "mlruns" / "models" / "reviews").is_dir()
    assert reg.champion().path.is_relative_to(tmp_path / "cache")
    assert not list((tmp_path / "work").iterdir())  # nothing written where it ran
