"""Every text model folder is a trust boundary: tampered folders are refused with one typed line.

Each test builds a good folder (the tiny backbone, a few dozen rows), tampers with one thing,
and checks that :func:`tunesmith.load`, :meth:`FineTuner.load` and :func:`load_predictor`
refuse it with an :class:`ArtifactError` naming the file and the field, that no code from
the folder ran (its canary file does not exist) and that nothing outside it was opened.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

import tunesmith
from tunesmith import ArtifactError, ConfigError, FineTuner
from tunesmith.backbones import create_backbone
from tunesmith.export.runtime import load_predictor

from .conftest import make_reviews

TOKENIZER_CONFIG = "tokenizer/tokenizer_config.json"


def _params(tmp: Path, **extra: Any) -> dict[str, Any]:
    return {
        "backbone": "tiny-text",
        "epochs": 1,
        "batch_size": 8,
        "lr": 3e-3,
        "max_length": 32,
        "progress": False,
        "runs_dir": "",
        "baselines": False,
        "num_threads": 1,
        **extra,
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """Good folders: a full fine-tune, a head-only model, a LoRA model (all on tiny-text)."""
    tmp = tmp_path_factory.mktemp("trust")
    data = make_reviews(32)
    out = {}
    for strategy in ("full", "head_only", "lora"):
        ft = FineTuner(**_params(tmp, strategy=strategy)).fit(data, target="label")
        out[strategy] = ft.save(tmp / strategy)
    return out


@pytest.fixture(scope="module")
def exported(saved, tmp_path_factory) -> Path:
    """The full model with its ONNX export."""
    pytest.importorskip("onnx")
    from tunesmith.export import export_onnx

    folder = tmp_path_factory.mktemp("exported") / "model"
    shutil.copytree(saved["full"], folder)
    export_onnx(folder, sample_size=16, threads=1)
    return folder


def _copy(src: Path, tmp_path: Path, name: str = "model") -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _edit_json(path: Path, **changes: Any) -> dict[str, Any]:
    data = json.loads(path.read_text())
    for dotted, value in changes.items():
        node = data
        parts = dotted.split("__")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    path.write_text(json.dumps(data))
    return data


def _set_meta(folder: Path, dotted: str, value: Any) -> None:
    path = folder / "tunesmith.json"
    data = json.loads(path.read_text())
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value
    path.write_text(json.dumps(data))


def _refused(folder: Path, match: str, *, predictor: bool = True, **kwargs: Any) -> None:
    """Both the Python loader and the torch predictor refuse ``folder`` with ``match``."""
    with pytest.raises(ArtifactError, match=match):
        tunesmith.load(folder, **kwargs)
    if predictor:
        with pytest.raises(ArtifactError, match=match):
            load_predictor(folder, backend="torch", threads=1, **kwargs)


# --- no code runs --------------------------------------------------------------------------------


CANARY_CODE = "from pathlib import Path\nPath({canary!r}).write_text('ran')\n"


@pytest.fixture
def no_prompt(monkeypatch):
    """Fail the test if anything asks on the terminal (transformers' trust_remote_code prompt)."""

    def refuse(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("something asked on the terminal")

    monkeypatch.setattr("builtins.input", refuse)


def test_tokenizer_auto_map_with_code_beside_is_refused(saved, tmp_path, no_prompt):
    folder = _copy(saved["full"], tmp_path)
    canary = tmp_path / "canary"
    (folder / "tokenizer" / "tokenization_evil.py").write_text(CANARY_CODE.format(canary=str(canary)))
    _edit_json(folder / TOKENIZER_CONFIG, auto_map={"AutoTokenizer": ["tokenization_evil.Evil", None]})
    _refused(folder, r"tokenizer/tokenization_evil\.py is code \(\.py\)")
    assert not canary.exists()
    # Without the file beside it the configuration alone is refused (transformers would otherwise ask).
    (folder / "tokenizer" / "tokenization_evil.py").unlink()
    _refused(folder, r"tokenizer_config\.json: field 'auto_map' names custom code")
    assert not canary.exists()


def test_backbone_config_auto_map_is_refused(saved, tmp_path, no_prompt):
    folder = _copy(saved["full"], tmp_path)
    _edit_json(folder / "backbone_config.json", auto_map={"AutoModel": "modeling_evil.Evil"})
    _refused(folder, r"backbone_config\.json: field 'auto_map' names custom code")


@pytest.mark.parametrize("rel", ["backbone_config.json", "tokenizer/config.json"])
def test_unknown_model_type_is_refused(saved, tmp_path, rel):
    folder = _copy(saved["full"], tmp_path)
    if rel == "tokenizer/config.json":
        shutil.copy(folder / "backbone_config.json", folder / rel)
    _edit_json(folder / rel, model_type="evil_model")
    _refused(folder, rf"{rel}: field 'model_type' is 'evil_model', which is not a model type of transformers")


@pytest.mark.parametrize("name", ["EvilTokenizer", "__class__", "PreTrainedModel", 5])
def test_tokenizer_class_must_be_a_transformers_tokenizer(saved, tmp_path, name):
    folder = _copy(saved["full"], tmp_path)
    _edit_json(folder / TOKENIZER_CONFIG, tokenizer_class=name)
    _refused(folder, r"tokenizer_config\.json: field 'tokenizer_class' is .*not a tokenizer class of transformers")


def test_local_backbone_folder_with_custom_code_is_refused_at_fit(tmp_path, no_prompt):
    enc = tmp_path / "enc"
    bb = create_backbone("tiny-text")
    bb.model.save_pretrained(str(enc), safe_serialization=True)
    bb.tokenizer.save_pretrained(str(enc))
    canary = tmp_path / "canary"
    (enc / "modeling_evil.py").write_text(CANARY_CODE.format(canary=str(canary)))
    _edit_json(enc / "config.json", auto_map={"AutoModel": "modeling_evil.Evil"})
    with pytest.raises(ConfigError, match=r"config\.json names custom code \(field 'auto_map'\)"):
        create_backbone(str(enc))
    _edit_json(enc / "config.json", auto_map=None, model_type="evil_model")
    with pytest.raises(ConfigError, match="cannot be loaded by transformers"):
        create_backbone(str(enc))
    assert not canary.exists()


# --- nothing outside is read -------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["tokenizer_file", "vocab_file"])
@pytest.mark.parametrize("where", ["absolute", "relative"])
def test_tokenizer_config_naming_a_file_elsewhere_is_refused(saved, tmp_path, key, where):
    folder = _copy(saved["full"], tmp_path)
    secret = tmp_path / "elsewhere.json"
    shutil.copy(folder / "tokenizer" / "tokenizer.json", secret)
    value = str(secret) if where == "absolute" else "../../elsewhere.json"
    _edit_json(folder / TOKENIZER_CONFIG, **{key: value})
    _refused(folder, rf"tokenizer_config\.json: field '{key}' names a file")


def test_special_tokens_map_naming_a_file_is_refused(saved, tmp_path):
    folder = _copy(saved["full"], tmp_path)
    (folder / "tokenizer" / "special_tokens_map.json").write_text(json.dumps({"vocab_file": "../x"}))
    _refused(folder, r"special_tokens_map\.json: field 'vocab_file' names a file")


@pytest.fixture
def local_encoder(tmp_path) -> Path:
    """A local Hugging Face folder of the tiny encoder (other weights than tiny-text's fingerprint)."""
    enc = tmp_path / "backbone"
    bb = create_backbone("tiny-text")
    bb.model.save_pretrained(str(enc), safe_serialization=True)
    bb.tokenizer.save_pretrained(str(enc))
    return enc


@pytest.mark.parametrize("name", ["absolute", "../backbone", "./backbone", "backbone"])
def test_head_only_backbone_path_in_metadata_is_never_opened(saved, tmp_path, local_encoder, monkeypatch, name):
    folder = _copy(saved["head_only"], tmp_path)
    monkeypatch.chdir(folder)  # "../backbone" would resolve to the real folder
    value = str(local_encoder) if name == "absolute" else name
    _set_meta(folder, "backbone.name", value)
    why = "is a path" if name != "backbone" else "is not a registered backbone"
    _refused(folder, rf"tunesmith\.json: field 'backbone\.name' .*{why}.*backbone=")
    # The caller may name the backbone; its fingerprint is still checked.
    with pytest.raises(ArtifactError, match=r"different weights.*'backbone\.fingerprint'"):
        tunesmith.load(folder, backbone=str(local_encoder))
    loaded = tunesmith.load(folder, backbone="tiny-text")
    assert loaded.predict(["great fun movie"]).shape == (1,)
    predictor = load_predictor(folder, backend="torch", threads=1, backbone="tiny-text")
    assert predictor.predict_rows(["great fun movie"])[0].label in ("pos", "neg")


def test_export_json_symlink_is_refused(exported, tmp_path):
    folder = _copy(exported, tmp_path)
    good = load_predictor(folder, backend="onnx", threads=1)
    assert good.export_info()["files"]["fp32"] == "onnx/model.onnx"
    assert good.metadata()["export"]["model_version"]
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"secret": "do not serve"}))
    (folder / "onnx" / "export.json").unlink()
    (folder / "onnx" / "export.json").symlink_to(secret)
    for backend in ("onnx", "torch"):
        with pytest.raises(ArtifactError, match=r"onnx/export\.json is a symbolic link"):
            load_predictor(folder, backend=backend, threads=1)


def _externalize(graph: Path, location: str) -> None:
    import onnx

    model = onnx.load(str(graph))
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    graph.write_bytes(model.SerializeToString())


@pytest.mark.parametrize("location", ["../../secret.bin", "/etc/hostname", "inside.data"])
def test_onnx_graph_with_external_data_is_refused(exported, tmp_path, location):
    folder = _copy(exported, tmp_path)
    (tmp_path / "secret.bin").write_bytes(b"S" * 64)
    (folder / "onnx" / "inside.data").write_bytes(b"S" * 64)
    _externalize(folder / "onnx" / "model.onnx", location)
    with pytest.raises(ArtifactError, match=r"model\.onnx: the ONNX graph stores tensor .* as external data"):
        load_predictor(folder, backend="onnx", precision="fp32", threads=1)


def test_onnx_predictor_checks_the_tokenizer_files(exported, tmp_path):
    folder = _copy(exported, tmp_path)
    _edit_json(folder / TOKENIZER_CONFIG, tokenizer_file="/etc/passwd")
    with pytest.raises(ArtifactError, match=r"tokenizer_config\.json: field 'tokenizer_file' names a file"):
        load_predictor(folder, backend="onnx", threads=1)
    folder = _copy(exported, tmp_path, "m2")
    _edit_json(folder / "backbone_config.json", vocab_size=10)
    with pytest.raises(ArtifactError, match=r"tokenizer\.json: .*holds token id \d+ but .*'vocab_size' is 10"):
        load_predictor(folder, backend="onnx", threads=1)
    folder = _copy(exported, tmp_path, "m3")
    _set_meta(folder, "n_outputs", 3)
    _set_meta(folder, "labels", ["a", "b", "c"])
    with pytest.raises(ArtifactError, match=r"model\.onnx: the ONNX graph gives 2 outputs but .*'n_outputs' is 3"):
        load_predictor(folder, backend="onnx", threads=1)


# --- bounded allocation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [("num_hidden_layers", 100_000), ("vocab_size", 10**9), ("hidden_size", -1), ("intermediate_size", "64")],
)
def test_config_sizes_are_bounded(saved, tmp_path, key, value):
    folder = _copy(saved["full"], tmp_path)
    _edit_json(folder / "backbone_config.json", **{key: value})
    _refused(folder, rf"backbone_config\.json: field '{key}' must be")


def test_declared_sizes_are_checked_against_the_weights_before_building(saved, tmp_path):
    folder = _copy(saved["full"], tmp_path)
    # Within the bounds, but 4M x 512 embeddings would be 8 GB of floats if they were built.
    _edit_json(
        folder / "backbone_config.json",
        vocab_size=4_000_000,
        hidden_size=512,
        num_hidden_layers=200,
        intermediate_size=2048,
    )
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    _refused(folder, r"model\.safetensors: the metadata describes tensor .* but the weights hold")
    assert time.perf_counter() - started < 60
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mb < 1024, f"peak memory grew by {grown_mb:.0f} MB"


def test_token_ids_past_the_embeddings_are_refused(saved, tmp_path):
    folder = _copy(saved["full"], tmp_path)
    (folder / "tokenizer" / "added_tokens.json").write_text(json.dumps({"[FAR]": 10**6}))
    _refused(folder, r"tokenizer/ gives token id \d+ but backbone_config\.json field 'vocab_size' is 147")


def test_head_shape_must_match_n_outputs(saved, tmp_path):
    for strategy in ("full", "head_only"):
        folder = _copy(saved[strategy], tmp_path, strategy)
        _set_meta(folder, "labels", ["a", "b", "c"])
        _set_meta(folder, "n_outputs", 3)
        _refused(folder, r"the metadata describes tensor 'head\.linear\.weight' as \[3, 32\] but the weights hold \[2")


def test_lora_rank_is_checked_before_adapters_are_built(saved, tmp_path):
    folder = _copy(saved["lora"], tmp_path)
    _set_meta(folder, "config.lora_r", 10**9)
    _refused(folder, r"tunesmith\.json: field 'config\.lora_r' is 1000000000 but the saved adapters have rank 8")
    folder = _copy(saved["lora"], tmp_path, "m2")
    _set_meta(folder, "config.lora_targets", ["nowhere"])
    _refused(folder, r"tunesmith\.json: field 'config\.lora_targets' is invalid.*no module named 'nowhere'")
    assert tunesmith.load(saved["lora"]).predict(["great fun movie"]).shape == (1,)


# --- no tracebacks: malformed files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dotted", "value", "match"),
    [
        ("task", 5, r"field 'task' must be string, got integer"),
        ("task", "ranking", r"field 'task' must be one of"),
        ("labels", "neg,pos", r"field 'labels' must be array"),
        ("labels", [1, 2], r"field 'labels'\[0\] must be a string"),
        ("n_outputs", "2", r"field 'n_outputs' must be integer, got string"),
        ("n_outputs", True, r"field 'n_outputs' must be integer, got boolean"),
        ("n_outputs", 3, r"field 'n_outputs' is 3 but a binary model with 2 labels has 2"),
        ("n_outputs", 10**7, r"field 'n_outputs' must be within"),
        ("schema", [], r"field 'schema' must be object"),
        ("schema.text_columns", "text", r"field 'schema\.text_columns' must be array"),
        ("schema.text_columns", [], r"field 'schema\.text_columns' names no column"),
        ("schema.task", "regression", r"field 'schema\.task' must be one of 'binary'"),
        ("config", "x", r"field 'config' must be object"),
        ("config.epochs", -1, r"field 'config' is invalid: setting 'epochs'"),
        ("config.max_length", "long", r"field 'config\.max_length' must be integer"),
        ("backbone", "tiny-text", r"field 'backbone' must be object"),
        ("backbone.pooling", "max", r"field 'backbone\.pooling' must be one of"),
        ("backbone.weights", 1, r"field 'backbone\.weights' must be string"),
        ("backbone.weights", "partial", r"field 'backbone\.weights' must be one of 'full', 'base'"),
        ("format_version", "1", r"field 'format_version' must be integer"),
        ("format_version", 2, r"model format version 2 is not supported"),
        ("history", {"a": 1}, r"field 'history' must be array"),
        ("metrics", [1], r"field 'metrics' must be object"),
        ("target_scaling", "x", r"field 'target_scaling' must be object"),
        ("preprocessing.scaler", {"version": 99}, r"field 'preprocessing\.scaler': scaler state"),
        ("preprocessing.impute", {"text": [1]}, r"field 'preprocessing\.impute\.text' must be a value"),
        ("label_values", [{}, 1], r"field 'label_values'\[0\] must be a label"),
        ("label_values", [1, 2], r"field 'label_values' is malformed"),
        ("kind", "video", r"field 'kind' must be one of"),
    ],
)
def test_mistyped_metadata_is_one_line(saved, tmp_path, dotted, value, match):
    folder = _copy(saved["full"], tmp_path)
    _set_meta(folder, dotted, value)
    # label_values only matter to the estimator (the predictor falls back to the labels).
    _refused(folder, r"tunesmith\.json: " + match, predictor=dotted != "label_values" or value != [1, 2])


def test_full_weights_declared_as_head_only(saved, tmp_path):
    folder = _copy(saved["full"], tmp_path)
    _set_meta(folder, "backbone.weights", "base")
    _refused(folder, r"model\.safetensors: weights hold tensor 'backbone\.model\..*' that the architecture")


def test_text_loader_refuses_another_kind(saved, tmp_path):
    folder = _copy(saved["full"], tmp_path)
    _set_meta(folder, "kind", "image")
    with pytest.raises(ArtifactError, match=r"tunesmith\.json: field 'kind' is 'image'.*not a text model"):
        FineTuner.load(folder)


def test_metadata_that_is_not_an_object(saved, tmp_path):
    folder = _copy(saved["full"], tmp_path)
    (folder / "tunesmith.json").write_text("[]")
    _refused(folder, r"tunesmith\.json must hold a JSON object")
    (folder / "tunesmith.json").write_text("{not json")
    _refused(folder, r"tunesmith\.json is not valid JSON")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("garbage", r"tokenizer/tokenizer\.json is not valid JSON"),
        ("[1, 2]", r"tokenizer/tokenizer\.json must hold a JSON object"),
        ('{"model": 5}', r"tokenizer/tokenizer\.json is not a tokenizer the tokenizers library can read"),
    ],
)
def test_malformed_tokenizer_json(saved, exported, tmp_path, content, match):
    for name, src in (("full", saved["full"]), ("exported", exported)):
        folder = _copy(src, tmp_path, name)
        (folder / "tokenizer" / "tokenizer.json").write_text(content)
        _refused(folder, match)
        if name == "exported":
            with pytest.raises(ArtifactError, match=match):
                load_predictor(folder, backend="onnx", threads=1)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"hidden_act": "nope"}, r"backbone_config\.json: does not describe an encoder transformers can build"),
        ({"hidden_size": 33}, r"backbone_config\.json: does not describe an encoder transformers can build"),
        ({"num_attention_heads": "2"}, r"backbone_config\.json: field 'num_attention_heads' must be integer"),
        ({"layer_norm_eps": "x"}, r"backbone_config\.json: does not describe a valid bert configuration"),
        ({"model_type": 5}, r"backbone_config\.json: field 'model_type' must be string"),
    ],
)
def test_malformed_backbone_config(saved, tmp_path, changes, match):
    folder = _copy(saved["full"], tmp_path)
    _edit_json(folder / "backbone_config.json", **changes)
    _refused(folder, match)
    (folder / "backbone_config.json").write_text("{")
    _refused(folder, r"backbone_config\.json is not valid JSON")


def test_cli_prints_one_line_without_traceback(saved, tmp_path, capsys):
    from tunesmith.cli import main

    data = tmp_path / "rows.csv"
    make_reviews(4).drop(columns=["label"]).to_csv(data, index=False)
    for name, tamper in (
        ("tok", lambda f: (f / "tokenizer" / "tokenizer.json").write_text('{"model": 5}')),
        ("meta", lambda f: _set_meta(f, "n_outputs", "two")),
        ("path", lambda f: _edit_json(f / TOKENIZER_CONFIG, tokenizer_file="../../x.json")),
    ):
        folder = _copy(saved["full"], tmp_path, name)
        tamper(folder)
        with pytest.raises(SystemExit) as exc:
            main(["predict", str(folder), str(data), "--output", str(tmp_path / "out.csv"), "--quiet"])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error:"), err
        assert str(folder.resolve()) in lines[0]
        assert not (tmp_path / "out.csv").exists()


def test_good_folders_still_load(saved):
    for folder in saved.values():
        ft = tunesmith.load(folder)
        assert ft.predict(["great fun movie"])[0] in ("pos", "neg")
        assert FineTuner.load(folder, backbone="tiny-text").model_path_ == folder.resolve()
