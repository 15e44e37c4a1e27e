"""Hyperparameter search spaces: which settings a search draws, and from which ranges.

A space maps the settings of one kind of model (its estimator's ``settings_model``:
:class:`~tunesmith.config.FitConfig` for text) to ranges, written as YAML::

    lr: {type: float, low: 1e-5, high: 2e-4, log: true}
    epochs: {type: int, low: 1, high: 4}               # optional step: 1
    batch_size: [16, 32, 64]                            # a list is a categorical choice
    strategy: {type: categorical, choices: [full, lora]}
    lora_r: {type: int, low: 4, high: 32, log: true, when: {strategy: lora}}
    dropout: {type: float, low: 0.0, high: 0.3, grid: [0.0, 0.1, 0.2]}
    warmup_ratio: 0.1                                   # a scalar is fixed, not searched

Every range is checked when the space is read, against both its own shape (``low`` below
``high``, a positive ``low`` for a log scale, ...) and the setting's own rules (``lr`` of
0 or ``strategy: foo`` is refused), so a mistake fails at once with the key
``search_space.<name>``, not in trial 37 of an overnight search.

``when`` makes a dimension conditional: it is drawn only while every named setting takes
one of the listed values. An inactive dimension is not suggested at all, which is how
Optuna represents a conditional space (the parameter is absent from the trial), so TPE
never models a LoRA rank for a full fine-tune.

Each built-in kind has a default space (:func:`default_space` for text, :func:`image_space`,
:func:`tabular_space`, :func:`recommender_space`); importing this module attaches each to its
kind in :mod:`tunesmith.estimators.registry`, and :func:`space_for` finds it by kind.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel

import tunesmith.estimators.image as _image
import tunesmith.estimators.text as _text
import tunesmith.recsys.recommender as _recommender
import tunesmith.tabular.estimator as _tabular
from tunesmith.config import FitConfig
from tunesmith.errors import ConfigError
from tunesmith.estimators import registry
from tunesmith.search.dimension import (
    MAX_GRID_VALUES,
    Dimension,
    Scalar,
    _contains,
    _key,
    _unknown_setting,
    _validated,
    is_setting,
    nest,
    parse_spec,
)

if TYPE_CHECKING:
    import optuna


class SearchSpace:
    """An ordered set of :class:`Dimension` objects plus fixed settings.

    Dimensions are kept in the given order, except that a dimension comes after every
    setting its ``when`` names: Optuna's define-by-run API needs a condition's value to be
    drawn before the dimension that depends on it. Construction validates the conditions
    (they must name a categorical dimension or a fixed setting of this space, list values
    it can take, and form no cycle).

    Args:
        dimensions: the searched settings.
        fixed: settings every trial gets as they are (not searched, not seen by Optuna).
        settings: the settings model of the kind searched (default: the text kind's
            :class:`~tunesmith.config.FitConfig`); every name and value is checked against it.
    """

    def __init__(
        self,
        dimensions: Sequence[Dimension] = (),
        fixed: Mapping[str, Any] | None = None,
        *,
        settings: type[BaseModel] = FitConfig,
    ) -> None:
        fixed = dict(fixed or {})
        self.settings = settings
        for dim in dimensions:
            if dim.settings is not settings:
                # One model checks every value: a dimension built for another kind is re-checked.
                raise ConfigError(
                    f"the dimension was checked against {dim.settings.__name__}, the space takes {settings.__name__}",
                    key=_key(dim.name),
                    hint="Build the dimension with settings= the kind's settings model",
                )
        seen: set[str] = set()
        for dim in dimensions:
            if dim.name in seen or dim.name in fixed:
                raise ConfigError(
                    "the setting appears twice in the space", key=_key(dim.name), hint="Give each setting one range"
                )
            seen.add(dim.name)
        self.fixed: dict[str, Any] = {}
        for name, value in fixed.items():
            if not is_setting(name, settings):
                raise _unknown_setting(name, settings=settings)
            self.fixed[name] = _validated(name, value, "fixed value", settings)
        by_name = {d.name: d for d in dimensions}
        for dim in dimensions:
            self._check_condition(dim, by_name)
        self.dimensions: tuple[Dimension, ...] = _order(list(dimensions))

    def _check_condition(self, dim: Dimension, by_name: Mapping[str, Dimension]) -> None:
        for param, allowed in dim.when.items():
            if param == dim.name:
                raise ConfigError(
                    "when names the dimension itself", key=_key(dim.name), hint="A condition must name another setting"
                )
            if param in self.fixed:
                if not _contains(allowed, self.fixed[param]):
                    raise ConfigError(
                        f"when {{{param}: {_show(allowed)}}} never holds: {param} is fixed to {self.fixed[param]!r}",
                        key=_key(dim.name),
                        hint=f"Search {param}, or drop the dimension",
                    )
                continue
            target = by_name.get(param)
            if target is None:
                raise ConfigError(
                    f"when names {param!r}, which is not in the search space",
                    key=_key(dim.name),
                    hint=f"Add {param} to the space (e.g. {param}: [a, b]) or drop the condition",
                )
            if target.kind != "categorical":
                raise ConfigError(
                    f"when names {param!r}, a {target.kind} range; conditions can only name a categorical or fixed "
                    "setting",
                    key=_key(dim.name),
                    hint=f"Make {param} a categorical (a list of values)",
                )
            for value in allowed:
                if not _contains(target.choices, value):
                    raise ConfigError(
                        f"when {{{param}: {value!r}}}: {value!r} is not among {param}'s choices {list(target.choices)}",
                        key=_key(dim.name),
                        hint=f"Use one of {param}'s choices",
                    )

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], *, source: str = "search space", settings: type[BaseModel] = FitConfig
    ) -> SearchSpace:
        """Read the YAML-style mapping ``setting -> spec`` (see the module docstring).

        Spec forms: ``{type: float|int, low, high[, log][, step]}``,
        ``{type: categorical, choices: [...]}``, a plain list (categorical), or a scalar
        (fixed). Either range form takes optional ``when: {setting: value(s)}`` and
        ``grid: [...]``. Numeric strings (YAML's ``1e-5``) are read as numbers.

        Raises:
            ConfigError: keyed ``search_space.<name>``, saying what is wrong and what to do.
        """
        if not isinstance(d, Mapping):
            raise ConfigError(
                f"{source} must be a mapping of setting to range, got {type(d).__name__}",
                key="search_space",
                hint="Write e.g. lr: {type: float, low: 1e-5, high: 1e-3, log: true}",
            )
        dimensions: list[Dimension] = []
        fixed: dict[str, Any] = {}
        for raw_name, spec in d.items():
            name = str(raw_name)
            if not is_setting(name, settings):
                raise _unknown_setting(name, "" if source == "search space" else f" in {source}", settings)
            parsed = parse_spec(name, spec, settings)
            if isinstance(parsed, Dimension):
                dimensions.append(parsed)
            else:
                fixed[name] = parsed[1]
        return cls(dimensions, fixed, settings=settings)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], *, settings: type[BaseModel] = FitConfig) -> SearchSpace:
        """Read a space from a YAML file (see :meth:`from_dict`)."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"search space file {str(p)!r} does not exist", key="search_space", hint="Check the path")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"search space file {str(p)!r} is not valid YAML: {exc}", key="search_space") from None
        if data is None:
            raise ConfigError(
                f"search space file {str(p)!r} is empty",
                key="search_space",
                hint="Write e.g. lr: {type: float, low: 1e-5, high: 1e-3, log: true}",
            )
        return cls.from_dict(data, source=p.name, settings=settings)

    def to_dict(self) -> dict[str, Any]:
        """The mapping form (plain dicts, lists and scalars); ``from_dict(to_dict())`` equals this space."""
        out: dict[str, Any] = {d.name: d.to_spec() for d in self.dimensions}
        out.update(self.fixed)
        return out

    def to_yaml(self) -> str:
        """The YAML form of :meth:`to_dict`."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # --- use ------------------------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the searched dimensions, in suggestion order."""
        return tuple(d.name for d in self.dimensions)

    @property
    def conditional(self) -> bool:
        """Whether any dimension has a ``when`` condition."""
        return any(d.when for d in self.dimensions)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Draw one set of settings from ``trial``: the active dimensions and the fixed values.

        Inactive conditional dimensions are neither suggested to Optuna nor returned, so
        the setting keeps its base value.
        """
        drawn: dict[str, Any] = dict(self.fixed)
        for dim in self.dimensions:
            if dim.is_active(drawn):
                drawn[dim.name] = dim.suggest(trial)
        return drawn

    def without(self, settings: Mapping[str, Any]) -> SearchSpace:
        """This space with the dimensions named in ``settings`` removed (they are fixed there).

        A dimension conditional on a removed one keeps its other conditions when the fixed
        value satisfies the removed condition, and is dropped when it does not.
        """
        kept: list[Dimension] = []
        for dim in self.dimensions:
            if dim.name in settings:
                continue
            when = dict(dim.when)
            ok = True
            for name in [n for n in when if n in settings]:
                if settings[name] not in when.pop(name):
                    ok = False
            if ok:
                kept.append(dataclasses.replace(dim, when=when))
        fixed = {k: v for k, v in self.fixed.items() if k not in settings}
        return SearchSpace(kept, fixed, settings=self.settings)

    def with_fixed(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` (e.g. an Optuna trial's ``params``) completed with the fixed values.

        Optuna records only what it drew; use this to rebuild a trial's full settings.
        """
        return {**self.fixed, **params}

    def grid(self) -> dict[str, list[Scalar]]:
        """The grid for :class:`optuna.samplers.GridSampler`: each dimension's values.

        Conditional spaces are refused: GridSampler enumerates the full product, so points
        differing only in an inactive dimension would be run as separate, identical trials.

        Raises:
            ConfigError: a conditional space, a float without ``grid``/``step``, or a
                dimension of more than 50 values without an explicit ``grid``.
        """
        conditional = [d.name for d in self.dimensions if d.when]
        if conditional:
            verb = "has a when condition" if len(conditional) == 1 else "have when conditions"
            raise ConfigError(
                f"grid search does not support conditional dimensions ({', '.join(conditional)} {verb}); "
                "use sampler random or tpe",
                key=_key(conditional[0]),
                hint="Or drop the when conditions and search each strategy separately",
            )
        return {d.name: d.grid_values() for d in self.dimensions}

    def n_grid_points(self) -> int:
        """How many points grid search visits (the product of the dimensions' value counts)."""
        return math.prod(len(v) for v in self.grid().values())

    def upper_bound(self, name: str) -> float | int | None:
        """The largest value ``name`` can take in this space (``None``: not in it, or not numeric)."""
        if name in self.fixed:
            value = self.fixed[name]
            return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        for dim in self.dimensions:
            if dim.name != name:
                continue
            if dim.kind != "categorical":
                return dim.high
            numbers = [c for c in dim.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
            return max(numbers) if numbers else None
        return None

    def __iter__(self) -> Iterator[Dimension]:
        return iter(self.dimensions)

    def __len__(self) -> int:
        return len(self.dimensions)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SearchSpace):
            return NotImplemented
        return self.dimensions == other.dimensions and self.fixed == other.fixed and self.settings is other.settings

    __hash__ = None  # type: ignore[assignment]  # mutable fixed mapping

    def __repr__(self) -> str:
        return f"SearchSpace({self.to_dict()!r})"


def _show(values: tuple[Scalar, ...]) -> str:
    return repr(values[0]) if len(values) == 1 else repr(list(values))


def _order(dimensions: list[Dimension]) -> tuple[Dimension, ...]:
    """Dimensions in the given order, moved only as far as needed to follow their conditions.

    Raises ConfigError naming the cycle when conditions depend on each other.
    """
    by_name = {d.name: d for d in dimensions}
    ordered: list[Dimension] = []
    placed: set[str] = set()

    def visit(dim: Dimension, path: list[str]) -> None:
        if dim.name in placed:
            return
        if dim.name in path:
            cycle = [*path[path.index(dim.name) :], dim.name]
            raise ConfigError(
                f"conditions form a cycle: {' -> '.join(cycle)}",
                key=_key(dim.name),
                hint="A when condition must not depend, directly or not, on the dimension itself",
            )
        for param in dim.when:
            if param in by_name:  # fixed settings need no ordering
                visit(by_name[param], [*path, dim.name])
        placed.add(dim.name)
        ordered.append(dim)

    for dim in dimensions:
        visit(dim, [])
    return tuple(ordered)


# --- defaults ---------------------------------------------------------------------------------

_TASKS = ("auto", "binary", "multiclass", "regression")
_STRATEGIES = ("full", "lora", "head_only")
# Learning rates per strategy: a full fine-tune diverges above ~2e-4, adapters and a new
# head alone want 10-100x more; one `lr` name can have only one range, so a space that
# searches the strategy itself gets the union.
_LR = {"full": (1e-5, 2e-4), "lora": (5e-5, 5e-3), "head_only": (1e-4, 1e-2), None: (1e-5, 1e-2)}


def default_space(task: str = "binary", strategy: str | None = None) -> SearchSpace:
    """The default search space for ``task``, searching ``strategy`` too unless one is given.

    ========================  =================================  ==========================
    setting                   range                              drawn when
    ========================  =================================  ==========================
    ``strategy``              ``[full, lora, head_only]``        strategy not given
                              (fixed to ``strategy`` if given)
    ``lr``                    float, log: 1e-5..1e-2 when the    always
                              strategy is searched; given
                              strategy: full 1e-5..2e-4, lora
                              5e-5..5e-3, head_only 1e-4..1e-2
    ``batch_size``            ``[16, 32, 64]``                   always
    ``epochs``                int 1..4                           always
    ``dropout``               float 0.0..0.3                     always
    ``weight_decay``          float, log: 1e-4..0.1              always
    ``warmup_ratio``          float 0.0..0.2                     always
    ``freeze_layers``         int 0..4                           strategy is full
    ``layer_lr_decay``        float 0.7..1.0                     strategy is full
    ``lora_r``                int, log: 4..32                    strategy is lora
    ``loss``                  ``[mse, huber]``                   task is regression
    ========================  =================================  ==========================

    With a given strategy the dimensions of other strategies are left out and those of
    that strategy are unconditional (so grid search can use the space once floats get
    ``grid`` values). ``task`` may be ``binary``, ``multiclass``, ``regression`` or ``auto``;
    only regression differs (it also searches the loss).

    Raises:
        ConfigError: an unknown task or strategy.
    """
    if task not in _TASKS:
        raise ConfigError(f"unknown task {task!r}; use one of {', '.join(_TASKS)}", key="task")
    if strategy is not None and strategy not in _STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; use one of {', '.join(_STRATEGIES)}", key="strategy")

    def only(name: str) -> dict[str, tuple[Scalar, ...]]:
        # When the strategy is searched, a strategy-specific dimension is conditional on it.
        return {"strategy": (name,)} if strategy is None else {}

    lr_low, lr_high = _LR[strategy]
    dims: list[Dimension] = []
    if strategy is None:
        dims.append(Dimension("strategy", "categorical", choices=_STRATEGIES))
    dims += [
        Dimension("lr", "float", lr_low, lr_high, log=True),
        Dimension("batch_size", "categorical", choices=(16, 32, 64)),
        Dimension("epochs", "int", 1, 4),
        Dimension("dropout", "float", 0.0, 0.3),
        Dimension("weight_decay", "float", 1e-4, 0.1, log=True),
        Dimension("warmup_ratio", "float", 0.0, 0.2),
    ]
    if strategy in (None, "full"):
        dims += [
            Dimension("freeze_layers", "int", 0, 4, when=only("full")),
            Dimension("layer_lr_decay", "float", 0.7, 1.0, when=only("full")),
        ]
    if strategy in (None, "lora"):
        dims.append(Dimension("lora_r", "int", 4, 32, log=True, when=only("lora")))
    if task == "regression":
        dims.append(Dimension("loss", "categorical", choices=("mse", "huber")))
    return SearchSpace(dims, {} if strategy is None else {"strategy": strategy})


# --- defaults of the other kinds -------------------------------------------------------------

_IMAGE = _image.ImageFineTuner.settings_model
_TABULAR = _tabular.TabularFineTuner.settings_model
_RECOMMENDER = _recommender.Recommender.settings_model
_TASKS_ANY = ("auto", "binary", "multiclass", "regression", None)


def _check_task(task: str | None) -> None:
    if task not in _TASKS_ANY:
        raise ConfigError(f"unknown task {task!r}; use one of {', '.join(_TASKS)}", key="task")


def image_space(task: str | None = "auto", strategy: str | None = None) -> SearchSpace:
    """The default search space of the image kind (settings of its ``ImageConfig``).

    ``lr`` (log 1e-4..1e-2), ``head_lr`` (log 1e-4..1e-1), ``dropout`` (0..0.5), ``epochs``
    (2..8), ``weight_decay`` (log 1e-4..0.1) and ``strategy`` (``full``, ``head_only``; fixed
    when ``strategy`` is given, and then ``lr`` is drawn only for ``full``).
    """
    _check_task(task)
    s = _IMAGE
    dims = [
        Dimension("head_lr", "float", 1e-4, 1e-1, log=True, settings=s),
        Dimension("dropout", "float", 0.0, 0.5, settings=s),
        Dimension("epochs", "int", 2, 8, settings=s),
        Dimension("weight_decay", "float", 1e-4, 0.1, log=True, settings=s),
    ]
    if strategy is None:
        dims.insert(0, Dimension("strategy", "categorical", choices=("full", "head_only"), settings=s))
        dims.insert(1, Dimension("lr", "float", 1e-4, 1e-2, log=True, when={"strategy": ("full",)}, settings=s))
        return SearchSpace(dims, settings=s)
    if strategy == "full":
        dims.insert(0, Dimension("lr", "float", 1e-4, 1e-2, log=True, settings=s))
    return SearchSpace(dims, {"strategy": strategy}, settings=s)


def tabular_space(task: str | None = "auto", model: str | None = None) -> SearchSpace:
    """The default search space of the tabular kind (settings of its ``TabularConfig``).

    LightGBM (when ``model`` is ``lightgbm``, ``ensemble`` or ``auto``): ``num_leaves`` (log
    8..128), ``learning_rate`` (log 0.01..0.3), ``min_child_samples`` (log 5..100),
    ``n_estimators`` (boosting rounds, log 50..2000) and, where the settings have them,
    ``feature_fraction`` (0.5..1) and ``lambda_l2`` (log 1e-3..10). The network (``neural``,
    ``ensemble``, ``auto``): ``dropout`` (0..0.5), ``lr`` (log 1e-4..1e-2), ``epochs`` (10..100)
    and ``hidden_width`` where the settings have it. ``model`` is searched among
    ``lightgbm``, ``neural`` and ``ensemble`` unless given.
    """
    _check_task(task)
    s = _TABULAR
    boost = ("lightgbm", "ensemble", "auto")
    net = ("neural", "ensemble", "auto")

    def when(models: tuple[str, ...]) -> dict[str, tuple[Scalar, ...]]:
        return {"model": tuple(m for m in models if m != "auto")} if model is None else {}

    wanted: list[tuple[tuple[str, ...], tuple[Any, ...], dict[str, bool]]] = [
        (boost, ("num_leaves", "int", 8, 128), {"log": True}),
        (boost, ("learning_rate", "float", 0.01, 0.3), {"log": True}),
        (boost, ("min_child_samples", "int", 5, 100), {"log": True}),
        (boost, ("n_estimators", "int", 50, 2000), {"log": True}),
        (boost, ("feature_fraction", "float", 0.5, 1.0), {}),
        (boost, ("lambda_l2", "float", 1e-3, 10.0), {"log": True}),
        (net, ("dropout", "float", 0.0, 0.5), {}),
        (net, ("lr", "float", 1e-4, 1e-2), {"log": True}),
        (net, ("epochs", "int", 10, 100), {}),
        (net, ("hidden_width", "int", 32, 512), {"log": True}),
    ]
    dims: list[Dimension] = []
    if model is None:
        dims.append(Dimension("model", "categorical", choices=("lightgbm", "neural", "ensemble"), settings=s))
    for models, args, extra in wanted:
        if args[0] in s.model_fields and (model is None or model in models):
            name, kind, low, high = args
            dims.append(Dimension(name, kind, low, high, log=extra.get("log", False), when=when(models), settings=s))
    return SearchSpace(dims, {} if model is None else {"model": model}, settings=s)


def recommender_space(task: str | None = None, model: str | None = None) -> SearchSpace:
    """The default search space of the recommender kind (settings of its ``RecommenderSettings``).

    Without ``model``: the model among ``ease``, ``itemknn`` and ``bpr``, each with its own
    settings (``model_params.*``): EASE's ``l2`` (log 1..5000); ItemKNN's ``k`` (log 10..200)
    and ``shrink`` (0..100); BPR's ``factors`` (log 16..128), ``lr`` (log 0.005..0.1),
    ``reg`` (log 1e-3..0.1) and ``epochs`` (10..60). With ``model="sasrec"``: ``seq.dim``
    (``[32, 64]``), ``seq.dropout`` (0..0.5) and ``finetune_settings.lr`` (log 1e-4..3e-3).
    """
    s = _RECOMMENDER
    if model == "sasrec":
        dims = [
            Dimension("seq.dim", "categorical", choices=(32, 64), settings=s),
            Dimension("seq.dropout", "float", 0.0, 0.5, settings=s),
            Dimension("finetune_settings.lr", "float", 1e-4, 3e-3, log=True, settings=s),
        ]
        return SearchSpace(dims, {"model": "sasrec"}, settings=s)
    per_model: dict[str, list[tuple[Any, ...]]] = {
        "ease": [("l2", "float", 1.0, 5000.0, True)],
        "itemknn": [("k", "int", 10, 200, True), ("shrink", "float", 0.0, 100.0, False)],
        "bpr": [
            ("factors", "int", 16, 128, True),
            ("lr", "float", 0.005, 0.1, True),
            ("reg", "float", 1e-3, 0.1, True),
            ("epochs", "int", 10, 60, False),
        ],
    }
    if model is not None and model not in per_model:
        return SearchSpace([], {"model": model}, settings=s)
    chosen = tuple(per_model) if model is None else (model,)
    dims = [] if model is not None else [Dimension("model", "categorical", choices=chosen, settings=s)]
    for name in chosen:
        when: dict[str, tuple[Scalar, ...]] = {"model": (name,)} if model is None else {}
        for key, kind, low, high, log in per_model[name]:
            dims.append(Dimension(f"model_params.{key}", kind, low, high, log=log, when=when, settings=s))
    return SearchSpace(dims, {} if model is None else {"model": model}, settings=s)


def _text_default(task: str | None, base: Mapping[str, Any]) -> SearchSpace:
    return default_space(task or "auto", strategy=base.get("strategy"))


def _image_default(task: str | None, base: Mapping[str, Any]) -> SearchSpace:
    return image_space(task, strategy=base.get("strategy"))


def _tabular_default(task: str | None, base: Mapping[str, Any]) -> SearchSpace:
    chosen = base.get("model")
    return tabular_space(task, model=None if chosen in (None, "auto") else chosen)


def _recommender_default(task: str | None, base: Mapping[str, Any]) -> SearchSpace:
    return recommender_space(task, model=base.get("model"))


def settings_model(kind: str) -> type[BaseModel]:
    """The settings model of a registered kind (what its spaces are checked against)."""
    model: type[BaseModel] = getattr(registry.estimator(kind), "settings_model")  # noqa: B009
    return model


def space_for(kind: str, task: str | None = "auto", base: Mapping[str, Any] | None = None) -> SearchSpace:
    """The default space of ``kind`` for ``task``, less the settings ``base`` fixes.

    Raises:
        NotSupportedError: a kind with no default space (search it with an explicit space).
    """
    base = dict(base or {})
    make = registry.require(
        registry.get(kind), "search_space", "a default search space", "Pass space= (a mapping or a YAML file)"
    )
    space: SearchSpace = make(task, base)
    return space.without(base)


registry.attach(_text.FineTuner.kind or "text", search_space=_text_default)
registry.attach(_image.ImageFineTuner.kind, search_space=_image_default)
registry.attach(_tabular.TabularFineTuner.kind, search_space=_tabular_default)
registry.attach(_recommender.Recommender.kind, search_space=_recommender_default)


__all__ = [
    "MAX_GRID_VALUES",
    "Dimension",
    "SearchSpace",
    "default_space",
    "image_space",
    "nest",
    "recommender_space",
    "settings_model",
    "space_for",
    "tabular_space",
]
