import pytest

from tunesmith.config import load_config_file, make_config, parse_override, settings_table
from tunesmith.errors import ConfigError


def test_defaults_are_valid():
    cfg = make_config({})
    assert cfg.backbone == "minilm-l6" and cfg.strategy == "auto" and cfg.epochs == 3


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"setting 'learning_rat'.*did you mean"):
        make_config({"learning_rat": 1})
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        make_config({"epoch": 1})


def test_out_of_range_names_key_and_value():
    with pytest.raises(ConfigError, match=r"setting 'lr'.*greater than 0.*-1"):
        make_config({"lr": -1})


def test_conflicts_name_both_settings():
    with pytest.raises(ConfigError, match="head_only.*gradual_unfreeze"):
        make_config({"strategy": "head_only", "gradual_unfreeze": True})
    with pytest.raises(ConfigError, match="lora.*freeze_layers"):
        make_config({"strategy": "lora", "freeze_layers": 2})
    with pytest.raises(ConfigError, match="valid_size \\+ test_size"):
        make_config({"valid_size": 0.5, "test_size": 0.5})


def test_overrides_parse_yaml_values():
    assert parse_override("lr=5e-5") == ("lr", 5e-5)
    assert parse_override("early_stopping=false") == ("early_stopping", False)
    assert parse_override("lora_targets=[query, key]") == ("lora_targets", ["query", "key"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("lr")
    with pytest.raises(ConfigError, match="setting 'lrr'"):
        parse_override("lrr=1")


def test_config_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("epochs: 5\nstrategy: lora\n")
    assert load_config_file(p) == {"epochs": 5, "strategy": "lora"}
    p.write_text("epochs: 5\nbogus: 1\n")
    with pytest.raises(ConfigError, match="setting 'bogus'"):
        load_config_file(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "missing.yaml")


def test_settings_table_lists_every_field():
    table = settings_table()
    assert "| `lora_r` | `8` |" in table


def test_docs_list_every_setting():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    assert settings_table() in doc, "docs/config.md is stale: regenerate it from tunesmith.config.settings_table()"
