"""Search spaces: parsing, validation at read time, conditional suggestion, grids, defaults."""

from __future__ import annotations

import itertools

import optuna
import pytest

from tunesmith.config import make_config
from tunesmith.errors import ConfigError
from tunesmith.search import Dimension, SearchSpace, default_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

CONDITIONAL = {
    "strategy": ["full", "lora"],
    "lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
    "lora_r": {"type": "int", "low": 4, "high": 32, "log": True, "when": {"strategy": "lora"}},
    "freeze_layers": {"type": "int", "low": 0, "high": 2, "when": {"strategy": ["full"]}},
}


def ask(space: SearchSpace, n: int, seed: int = 0) -> list[tuple[dict, dict]]:
    """``n`` draws: (what suggest returned, what Optuna recorded)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((space.suggest(trial), dict(trial.params)))
        study.tell(trial, 0.0)
    return out


# --- parsing ---------------------------------------------------------------------------------


def test_parses_every_form():
    space = SearchSpace.from_dict(
        {
            "lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
            "epochs": {"type": "int", "low": 1, "high": 4, "step": 1},
            "strategy": {"type": "categorical", "choices": ["full", "lora"]},
            "batch_size": [16, 32],
            "warmup_ratio": 0.1,
            "dropout": {"type": "float", "low": 0.0, "high": 0.3, "step": 0.1},
        }
    )
    assert space.names == ("lr", "epochs", "strategy", "batch_size", "dropout")
    assert space.fixed == {"warmup_ratio": 0.1}
    lr, epochs, strategy, batch, dropout = space.dimensions
    assert lr == Dimension("lr", "float", 1e-5, 1e-3, log=True)
    assert (epochs.kind, epochs.low, epochs.high, epochs.step) == ("int", 1, 4, 1)
    assert strategy.choices == ("full", "lora") and batch.kind == "categorical" and batch.choices == (16, 32)
    assert dropout.step == 0.1 and not dropout.log
    assert len(space) == 5 and [d.name for d in space] == list(space.names)


def test_numeric_strings_are_numbers():
    # YAML reads 1e-5 (no dot) as a string.
    space = SearchSpace.from_dict(
        {
            "lr": {"type": "float", "low": "1e-5", "high": "1e-3", "log": True},
            "epochs": {"type": "int", "low": "1", "high": "4.0"},
        }
    )
    lr, epochs = space.dimensions
    assert lr.low == 1e-5 and isinstance(lr.low, float) and lr.high == 1e-3
    assert epochs.low == 1 and epochs.high == 4 and isinstance(epochs.high, int)
    assert SearchSpace.from_dict({"lr": "3e-5"}).fixed == {"lr": 3e-5}
    assert SearchSpace.from_dict({"batch_size": ["16", "32"]}).dimensions[0].choices == (16, 32)


def test_yaml_file_round_trip(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "lr: {type: float, low: 1e-5, high: 1e-3, log: true}\n"
        "strategy: [full, lora]\n"
        "lora_r: {type: int, low: 4, high: 32, when: {strategy: lora}}\n"
        "dropout: {type: float, low: 0.0, high: 0.2, grid: [0.0, 0.1, 0.2]}\n"
        "warmup_ratio: 0.1\n"
    )
    space = SearchSpace.from_yaml(path)
    assert space.dimensions[0] == Dimension("lr", "float", 1e-5, 1e-3, log=True)
    assert space.dimensions[2].when == {"strategy": ("lora",)}
    assert space.dimensions[3].grid == (0.0, 0.1, 0.2)
    assert SearchSpace.from_dict(space.to_dict()) == space
    (tmp_path / "again.yaml").write_text(space.to_yaml())
    assert SearchSpace.from_yaml(tmp_path / "again.yaml") == space


def test_conditions_are_ordered_after_what_they_name():
    space = SearchSpace.from_dict(
        {
            "lora_alpha": {"type": "float", "low": 8, "high": 32, "when": {"lora_r": [8, 16]}},
            "lora_r": {"type": "categorical", "choices": [8, 16, 32], "when": {"strategy": "lora"}},
            "lr": {"type": "float", "low": 1e-5, "high": 1e-3},
            "strategy": ["full", "lora"],
        }
    )
    assert space.names == ("strategy", "lora_r", "lora_alpha", "lr")


def test_upper_bound_and_with_fixed():
    space = SearchSpace.from_dict({"epochs": {"type": "int", "low": 1, "high": 6}, "batch_size": [8, 64], "seed": 3})
    assert space.upper_bound("epochs") == 6 and space.upper_bound("batch_size") == 64
    assert space.upper_bound("seed") == 3 and space.upper_bound("lr") is None
    assert space.with_fixed({"epochs": 2}) == {"seed": 3, "epochs": 2}


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "key", "message"),
    [
        ({"learning_rate": [1e-3]}, "learning_rate", r"unknown setting.*did you mean 'lr'"),
        ({"dropuot": {"type": "float", "low": 0, "high": 0.3}}, "dropuot", r"did you mean 'dropout'"),
        ({"lr": {"type": "flaot", "low": 1e-5, "high": 1e-3}}, "lr", r"unknown type 'flaot'; did you mean 'float'"),
        ({"lr": {"low": 1e-5, "high": 1e-3}}, "lr", r"needs type: float, int or categorical"),
        ({"lr": {"type": "float", "low": 1e-5}}, "lr", r"needs low and high \(high missing\)"),
        ({"lr": {"type": "float", "low": 1e-3, "high": 1e-4}}, "lr", r"low must be below high"),
        ({"lr": {"type": "float", "low": 1e-3, "high": 1e-3}}, "lr", r"low must be below high"),
        ({"dropout": {"type": "float", "low": 0.0, "high": 0.3, "log": True}}, "dropout", r"log scale needs positive"),
        (
            {"lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True, "step": 1e-5}},
            "lr",
            r"step cannot be .*log",
        ),
        ({"epochs": {"type": "int", "low": 1.5, "high": 4}}, "epochs", r"whole numbers \(low is 1.5\)"),
        ({"epochs": {"type": "float", "low": 1, "high": 4}}, "epochs", r"takes whole numbers.*"),
        ({"epochs": {"type": "int", "low": 1, "high": 4, "step": 2}}, "epochs", r"not a multiple of step"),
        ({"lr": {"type": "float", "low": "abc", "high": 1e-3}}, "lr", r"low must be a number"),
        ({"strategy": {"type": "categorical", "choices": []}}, "strategy", r"choices is empty"),
        ({"strategy": []}, "strategy", r"choices is empty"),
        ({"strategy": {"type": "categorical"}}, "strategy", r"needs choices"),
        ({"lr": {"type": "float", "low": 1e-5, "high": 1e-3, "hgih": 1}}, "lr", r"'hgih' does not apply"),
        ({"strategy": {"type": "categorical", "choices": ["full"], "log": True}}, "strategy", r"'log' does not apply"),
        # values the setting itself refuses, found at read time
        ({"lr": {"type": "float", "low": 0.0, "high": 1e-3}}, "lr", r"low 0.0 is refused by the setting: .*greater"),
        ({"dropout": {"type": "float", "low": 0.0, "high": 1.0}}, "dropout", r"high 1.0 is refused.*less than 1"),
        ({"strategy": ["full", "foo"]}, "strategy", r"choice 'foo' is refused.*'head_only', 'lora' or 'fewshot'"),
        ({"lr": 0}, "lr", r"fixed value 0 is refused"),
        ({"batch_size": [16, 16]}, "batch_size", r"listed twice"),
        # conditions
        (
            {"lora_r": {"type": "int", "low": 4, "high": 8, "when": {"strategy": "lora"}}},
            "lora_r",
            r"not in the search",
        ),
        (
            {
                "strategy": ["full", "head_only"],
                "lora_r": {"type": "int", "low": 4, "high": 8, "when": {"strategy": "lora"}},
            },
            "lora_r",
            r"'lora' is not among strategy's choices",
        ),
        (
            {"strategy": "full", "lora_r": {"type": "int", "low": 4, "high": 8, "when": {"strategy": "lora"}}},
            "lora_r",
            r"never holds: strategy is fixed to 'full'",
        ),
        (
            {
                "epochs": {"type": "int", "low": 1, "high": 3},
                "lr": {"type": "float", "low": 1e-5, "high": 1e-3, "when": {"epochs": 2}},
            },
            "lr",
            r"only name a categorical",
        ),
        (
            {
                "optimizer": {"type": "categorical", "choices": ["adam", "sgd"], "when": {"scheduler": "linear"}},
                "scheduler": {"type": "categorical", "choices": ["linear", "cosine"], "when": {"optimizer": "sgd"}},
            },
            "optimizer",
            r"cycle: optimizer -> scheduler -> optimizer",
        ),
        ({"lr": {"type": "float", "low": 1e-5, "high": 1e-3, "when": "lora"}}, "lr", r"when must be a mapping"),
        # grids
        ({"lr": {"type": "float", "low": 1e-5, "high": 1e-3, "grid": [1e-2]}}, "lr", r"outside low..high"),
        ({"strategy": {"type": "categorical", "choices": ["full"], "grid": ["lora"]}}, "strategy", r"not among"),
    ],
)
def test_errors_name_the_key_and_the_fix(spec, key, message):
    with pytest.raises(ConfigError, match=message) as exc:
        SearchSpace.from_dict(spec)
    want = f"search_space.{key}"
    assert exc.value.key == want
    assert str(exc.value).startswith(f"setting '{want}': ")
    # every error says what to do: a hint, or the closest setting's name
    assert exc.value.hint or "did you mean" in exc.value.message


def test_not_a_mapping_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="must be a mapping of setting to range, got list") as exc:
        SearchSpace.from_dict(["lr"])  # type: ignore[arg-type]
    assert exc.value.key == "search_space"
    with pytest.raises(ConfigError, match="does not exist"):
        SearchSpace.from_yaml(tmp_path / "nope.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        SearchSpace.from_yaml(tmp_path / "empty.yaml")
    (tmp_path / "typo.yaml").write_text("learning_rat: [1e-3]\n")
    with pytest.raises(ConfigError, match="unknown setting in typo.yaml; did you mean 'lr'") as exc:
        SearchSpace.from_yaml(tmp_path / "typo.yaml")
    assert exc.value.key == "search_space.learning_rat"


def test_cross_setting_conflicts_with_defaults_are_left_to_the_trial():
    # valid_size 0.95 conflicts with the default test_size (0.1), not with the rules of
    # valid_size: the trial's own test_size decides, so the space accepts it.
    space = SearchSpace.from_dict({"valid_size": {"type": "float", "low": 0.1, "high": 0.95}})
    assert space.dimensions[0].high == 0.95


# --- suggest ---------------------------------------------------------------------------------


def test_conditional_suggest_with_a_real_study():
    space = SearchSpace.from_dict({**CONDITIONAL, "warmup_ratio": 0.1})
    draws = ask(space, 30)
    strategies = {s["strategy"] for s, _ in draws}
    assert strategies == {"full", "lora"}
    for suggested, recorded in draws:
        lora = suggested["strategy"] == "lora"
        assert ("lora_r" in suggested) == lora and ("lora_r" in recorded) == lora
        assert ("freeze_layers" in suggested) == (not lora) and ("freeze_layers" in recorded) == (not lora)
        assert suggested["warmup_ratio"] == 0.1 and "warmup_ratio" not in recorded  # fixed: not an Optuna param
        assert 1e-5 <= suggested["lr"] <= 1e-3
        assert {k: v for k, v in suggested.items() if k != "warmup_ratio"} == recorded
        make_config(suggested)


def test_suggest_respects_step_log_and_types():
    space = SearchSpace.from_dict(
        {
            "dropout": {"type": "float", "low": 0.0, "high": 0.3, "step": 0.1},
            "lora_r": {"type": "int", "low": 4, "high": 32, "log": True},
            "batch_size": [16, 32],
            "early_stopping": [True, False],
        }
    )
    for suggested, _ in ask(space, 20, seed=1):
        assert any(abs(suggested["dropout"] - v) < 1e-9 for v in (0.0, 0.1, 0.2, 0.3))
        assert isinstance(suggested["lora_r"], int) and 4 <= suggested["lora_r"] <= 32
        assert suggested["batch_size"] in (16, 32) and isinstance(suggested["early_stopping"], bool)


def test_condition_on_a_fixed_setting_is_always_on():
    space = SearchSpace.from_dict(
        {"strategy": "lora", "lora_r": {"type": "int", "low": 4, "high": 8, "when": {"strategy": ["lora", "full"]}}}
    )
    for suggested, _ in ask(space, 3):
        assert suggested["strategy"] == "lora" and 4 <= suggested["lora_r"] <= 8


# --- grid ------------------------------------------------------------------------------------


def test_grid_values_and_size():
    space = SearchSpace.from_dict(
        {
            "lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True, "grid": ["1e-5", 1e-4, 1e-3]},
            "epochs": {"type": "int", "low": 1, "high": 5, "step": 2},
            "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1},
            "strategy": ["full", "lora"],
            "seed": 1,
        }
    )
    assert space.grid() == {
        "lr": [1e-5, 1e-4, 1e-3],
        "epochs": [1, 3, 5],
        "warmup_ratio": [0.0, 0.1, 0.2],
        "strategy": ["full", "lora"],
    }
    assert space.n_grid_points() == 3 * 3 * 3 * 2
    assert SearchSpace.from_dict({"freeze_layers": {"type": "int", "low": 0, "high": 3}}).grid() == {
        "freeze_layers": [0, 1, 2, 3]
    }


def test_grid_sampler_visits_every_point_once():
    space = SearchSpace.from_dict(
        {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True, "grid": [1e-4, 1e-3, 1e-2]},
            "epochs": {"type": "int", "low": 1, "high": 2},
            "strategy": ["full", "lora"],
            "seed": 7,
        }
    )
    n = space.n_grid_points()
    assert n == 12
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(space.grid(), seed=0))
    seen = []

    def objective(trial: optuna.Trial) -> float:
        params = space.suggest(trial)
        assert params["seed"] == 7
        seen.append((params["lr"], params["epochs"], params["strategy"]))
        return 0.0

    study.optimize(objective, n_trials=n)
    assert len(seen) == n and set(seen) == set(itertools.product(*space.grid().values()))


@pytest.mark.parametrize(
    ("spec", "key", "message"),
    [
        ({"lr": {"type": "float", "low": 1e-5, "high": 1e-3}}, "lr", r"float dimension needs grid: \[...\] or step"),
        ({"batch_size": {"type": "int", "low": 1, "high": 64}}, "batch_size", r"would try 64 values.*more than 50"),
        ({"dropout": {"type": "float", "low": 0.0, "high": 0.6, "step": 0.01}}, "dropout", r"would try 61 values"),
        (CONDITIONAL, "lora_r", r"grid search does not support conditional dimensions .*use sampler random or tpe"),
    ],
)
def test_grid_errors(spec, key, message):
    space = SearchSpace.from_dict(spec)
    for call in (space.grid, space.n_grid_points):
        with pytest.raises(ConfigError, match=message) as exc:
            call()
        assert exc.value.key == f"search_space.{key}" and exc.value.hint


# --- defaults --------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression", "auto"])
@pytest.mark.parametrize("strategy", [None, "full", "lora", "head_only"])
def test_default_space_is_valid(task, strategy):
    space = default_space(task, strategy)
    assert SearchSpace.from_dict(space.to_dict()) == space
    assert ("loss" in space.names) == (task == "regression")
    for dim in space.dimensions:
        values = dim.choices if dim.kind == "categorical" else (dim.low, dim.high)
        for value in values:
            make_config({dim.name: value})  # every bound and choice passes FitConfig
    if strategy is None:
        assert space.dimensions[0].name == "strategy" and space.conditional
    else:
        assert space.fixed == {"strategy": strategy} and not space.conditional
        assert not {"lora_r"} & set(space.names) or strategy == "lora"
    for suggested, _ in ask(space, 15):
        make_config(suggested)  # every draw is a valid, conflict-free config


def test_default_space_ranges_per_strategy():
    def lr(strategy):
        dim = next(d for d in default_space("binary", strategy).dimensions if d.name == "lr")
        return dim.low, dim.high, dim.log

    assert lr("full") == (1e-5, 2e-4, True) and lr("head_only") == (1e-4, 1e-2, True) and lr(None) == (1e-5, 1e-2, True)
    full = default_space(strategy="full")
    assert {"freeze_layers", "layer_lr_decay"} <= set(full.names) and "lora_r" not in full.names
    assert set(default_space(strategy="head_only").names) == {
        "lr",
        "batch_size",
        "epochs",
        "dropout",
        "weight_decay",
        "warmup_ratio",
    }
    assert default_space(strategy="full").upper_bound("epochs") == 4


def test_default_space_rejects_unknown_task_and_strategy():
    with pytest.raises(ConfigError, match="unknown task 'clasify'") as exc:
        default_space("clasify")
    assert exc.value.key == "task"
    with pytest.raises(ConfigError, match="unknown strategy 'qlora'") as exc:
        default_space("binary", "qlora")
    assert exc.value.key == "strategy"


def test_without_removes_fixed_settings_and_resolves_their_conditions():
    space = SearchSpace.from_dict(
        {
            "strategy": ["full", "lora"],
            "lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
            "lora_r": {"type": "int", "low": 4, "high": 32, "when": {"strategy": "lora"}},
            "freeze_layers": {"type": "int", "low": 0, "high": 4, "when": {"strategy": "full"}},
        }
    )
    reduced = space.without({"strategy": "lora", "lr": 1e-4})
    assert reduced.names == ("lora_r",)
    assert not reduced.conditional


def test_each_kind_has_a_default_space_of_its_own_settings():
    from tunesmith.search.space import settings_model, space_for

    for kind in ("text", "image", "tabular", "recommender"):
        space = space_for(kind, "binary")
        assert len(space) > 0 and space.settings is settings_model(kind)
    assert "num_leaves" in space_for("tabular", "binary").names
    assert "lr" not in space_for("tabular", "binary", {"model": "lightgbm"}).names
    assert "model_params.l2" in space_for("recommender").names


def test_a_kinds_space_accepts_exactly_its_settings():
    from tunesmith.search.space import settings_model

    tabular = settings_model("tabular")
    space = SearchSpace.from_dict({"num_leaves": {"type": "int", "low": 8, "high": 64}}, settings=tabular)
    assert space.names == ("num_leaves",)
    with pytest.raises(ConfigError) as err:
        SearchSpace.from_dict({"lora_r": [4, 8]}, settings=tabular)
    assert err.value.key == "search_space.lora_r"
    with pytest.raises(ConfigError, match="refused"):
        SearchSpace.from_dict({"num_leaves": {"type": "int", "low": 1, "high": 64}}, settings=tabular)
    rec = SearchSpace.from_dict(
        {"model": ["ease"], "model_params.l2": [10.0, 100.0]}, settings=settings_model("recommender")
    )
    assert rec.names == ("model", "model_params.l2")
    with pytest.raises(ConfigError):
        SearchSpace.from_dict({"seed.x": [1]}, settings=settings_model("recommender"))
