"""Hyperparameter search spaces: which settings a search draws, and from which ranges.

A space maps :class:`~tunesmith.config.FitConfig` settings to ranges, written as YAML::

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
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import yaml

from tunesmith.config import FIELD_NAMES, FitConfig, _closest, make_config
from tunesmith.errors import ConfigError

if TYPE_CHECKING:
    import optuna

Kind = Literal["float", "int", "categorical"]
KINDS: tuple[str, ...] = ("float", "int", "categorical")

#: Values Optuna can store as categorical choices or grid points.
Scalar = str | int | float | bool | None

#: The most points an int range or float step may expand to for grid search; a larger grid
#: is almost always a mistake (an hour-long search per point), so it must be listed.
MAX_GRID_VALUES = 50

_NUMERIC_KEYS = {"type", "low", "high", "log", "step", "when", "grid"}
_CATEGORICAL_KEYS = {"type", "choices", "when", "grid"}
_DOCS = "see docs/search.md"


def _key(name: str) -> str:
    return f"search_space.{name}"


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _same(a: Any, b: Any) -> bool:
    # True == 1 in Python; a condition `{early_stopping: true}` must not match a choice 1.
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)


def _contains(values: Sequence[Any], value: Any) -> bool:
    return any(_same(v, value) for v in values)


def _number(name: str, what: str, value: Any) -> float | int:
    """A bound or step as a number; YAML reads ``1e-5`` (no dot) as a string, so convert it."""
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"{what} must be a number (got {value!r})", key=_key(name), hint=f"Write e.g. {what}: 0.001")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = float(value.strip())
            return int(number) if number.is_integer() and not any(c in value for c in "eE.") else number
    raise ConfigError(f"{what} must be a number (got {value!r})", key=_key(name), hint=f"Write e.g. {what}: 0.001")


def _whole_numbers_only(name: str) -> bool:
    """Whether the setting takes ints but not floats (a float range would be refused mid-search)."""
    annotation = FitConfig.model_fields[name].annotation
    args = get_args(annotation) or (annotation,)
    return int in args and float not in args


def _validated(name: str, value: Any, what: str) -> Any:
    """``value`` as the setting would hold it, or a ConfigError naming ``search_space.<name>``.

    Checked through :func:`make_config` so that the space and a fit share one set of rules.
    The value is normalised to the setting's type where that is a plain scalar (YAML's
    ``"1e-5"`` becomes ``1e-05``, ``"16"`` becomes ``16``), so Optuna stores numbers.
    """
    try:
        config = make_config({name: value})
    except ConfigError as exc:
        if exc.key is None:
            # A cross-setting conflict with some *default* (valid_size: 0.95 against the
            # default test_size): the trial's other settings decide, so it is checked per trial.
            return value
        raise ConfigError(
            f"{what} {value!r} is refused by the setting: {exc.message}",
            key=_key(name),
            hint="Choose values the setting accepts (see docs/config.md)",
        ) from None
    normalised = getattr(config, name)
    return normalised if _is_scalar(normalised) else value


def _unknown_setting(name: str, where: str = "") -> ConfigError:
    guess = _closest(name, FIELD_NAMES)
    # The suggestion is the fix; without one, point at the list of settings.
    hint = None if guess else "A search space maps settings (see docs/config.md) to ranges"
    return ConfigError(f"unknown setting{where}{guess}", key=_key(name), hint=hint)


def _normalised_or_raw(name: str, value: Any) -> Any:
    try:
        return _validated(name, value, "value")
    except ConfigError:
        return value


@dataclass(frozen=True)
class Dimension:
    """One searched setting: a float or int range, or a categorical choice.

    Attributes:
        name: the :class:`~tunesmith.config.FitConfig` setting it draws.
        kind: ``"float"``, ``"int"`` or ``"categorical"``.
        low, high: inclusive bounds of a float or int range.
        log: draw on a log scale (bounds must be positive; no ``step``).
        step: spacing of the drawn values (``None``: continuous float, or 1 for int).
        choices: the values of a categorical dimension.
        when: condition ``{setting: allowed values}``; the dimension is drawn only while
            every named setting takes one of its allowed values. Empty: always drawn.
        grid: explicit values for grid search (required for a float without ``step``).

    Constructing one validates it (and normalises ``when`` values to tuples, int bounds to
    ints); errors are :class:`~tunesmith.errors.ConfigError` keyed ``search_space.<name>``.
    """

    name: str
    kind: Kind
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Scalar, ...] = ()
    when: Mapping[str, tuple[Scalar, ...]] = field(default_factory=dict)
    grid: tuple[Scalar, ...] | None = None

    def __post_init__(self) -> None:
        name = self.name
        if name not in FitConfig.model_fields:
            raise _unknown_setting(name)
        if self.kind not in KINDS:
            close = difflib.get_close_matches(str(self.kind), KINDS, n=1)
            guess = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown type {self.kind!r}{guess}", key=_key(name), hint="Use type: float, int or categorical"
            )
        set_ = object.__setattr__  # frozen: normalise in place once, here
        when: dict[str, tuple[Scalar, ...]] = {}
        for param, allowed in dict(self.when).items():
            values = tuple(allowed) if isinstance(allowed, (list, tuple)) else (allowed,)
            if not values:
                raise ConfigError(
                    f"when {{{param}: []}} lists no value, so the dimension is never drawn",
                    key=_key(name),
                    hint=f"Give the value(s) of {param} that switch it on, e.g. when: {{strategy: lora}}",
                )
            if str(param) in FitConfig.model_fields:
                # Normalised like the choices it is compared with ("16" -> 16); a value the
                # setting refuses is left as is and reported by SearchSpace as not a choice.
                values = tuple(_normalised_or_raw(str(param), v) for v in values)
            when[str(param)] = values
        set_(self, "when", when)
        if self.kind == "categorical":
            self._check_categorical()
        else:
            self._check_range()
        if self.grid is not None:
            self._check_grid()

    def __hash__(self) -> int:
        return hash(
            (
                self.name,
                self.kind,
                self.low,
                self.high,
                self.log,
                self.step,
                self.choices,
                tuple(self.when.items()),
                self.grid,
            )
        )

    # --- validation -------------------------------------------------------------------------

    def _check_categorical(self) -> None:
        name = self.name
        for attr in ("low", "high", "step"):
            if getattr(self, attr) is not None:
                raise ConfigError(
                    f"{attr} does not apply to a categorical dimension",
                    key=_key(name),
                    hint="Give choices: [...] only, or use type: float / int for a range",
                )
        if self.log:
            raise ConfigError("log does not apply to a categorical dimension", key=_key(name), hint="Remove log")
        if not self.choices:
            raise ConfigError("choices is empty", key=_key(name), hint="List at least one value, e.g. choices: [a, b]")
        for choice in self.choices:
            if not _is_scalar(choice):
                raise ConfigError(
                    f"choice {choice!r} is not a number, string, boolean or null",
                    key=_key(name),
                    hint="Optuna stores only scalar choices; put list or mapping settings in the config file",
                )
        choices = tuple(_validated(name, c, "choice") for c in self.choices)
        for i, choice in enumerate(choices):
            if _contains(choices[:i], choice):
                raise ConfigError(f"choice {choice!r} is listed twice", key=_key(name), hint="List each value once")
        object.__setattr__(self, "choices", choices)

    def _check_range(self) -> None:
        name = self.name
        if self.choices:
            raise ConfigError(
                f"choices does not apply to a {self.kind} dimension",
                key=_key(name),
                hint="Use type: categorical for a list of values, or low/high for a range",
            )
        missing = [attr for attr in ("low", "high") if getattr(self, attr) is None]
        if missing:
            raise ConfigError(
                f"a {self.kind} dimension needs low and high ({' and '.join(missing)} missing)",
                key=_key(name),
                hint=f"Write e.g. {{type: {self.kind}, low: 1, high: 4}}",
            )
        low = _number(name, "low", self.low)
        high = _number(name, "high", self.high)
        step = None if self.step is None else _number(name, "step", self.step)
        if self.kind == "int":
            for what, value in (("low", low), ("high", high), ("step", step)):
                if value is not None and not float(value).is_integer():
                    raise ConfigError(
                        f"an int dimension needs whole numbers ({what} is {value!r})",
                        key=_key(name),
                        hint="Use whole bounds and step, or type: float for fractional values",
                    )
            low, high = int(low), int(high)
            step = None if step is None else int(step)
        else:
            if _whole_numbers_only(name):
                raise ConfigError(
                    f"{name} takes whole numbers, so a float range would be refused mid-search",
                    key=_key(name),
                    hint="Use type: int",
                )
            low, high = float(low), float(high)
            step = None if step is None else float(step)
        if not math.isfinite(low) or not math.isfinite(high):
            raise ConfigError(
                f"bounds must be finite (got {low!r}..{high!r})", key=_key(name), hint="Use finite numbers"
            )
        if low >= high:
            raise ConfigError(
                f"empty range: low must be below high (got low={low!r}, high={high!r})",
                key=_key(name),
                hint=f"Swap them, or give a single value as `{name}: {low!r}` to fix it",
            )
        if self.log and low <= 0:
            raise ConfigError(
                f"a log scale needs positive bounds (got low={low!r})",
                key=_key(name),
                hint="Use a positive low such as 1e-6, or drop log: true",
            )
        if step is not None:
            if self.log:
                raise ConfigError(
                    "step cannot be combined with log: true", key=_key(name), hint="Drop step, or drop log"
                )
            if not step > 0:
                raise ConfigError(f"step must be positive (got {step!r})", key=_key(name), hint="Use e.g. step: 1")
            # Optuna silently moves `high` down to the last step; say so instead.
            n = (high - low) / step
            if abs(n - round(n)) > 1e-9 * max(1.0, abs(n)):
                raise ConfigError(
                    f"high - low ({high - low!r}) is not a multiple of step ({step!r})",
                    key=_key(name),
                    hint="Adjust high or step so that low + k * step reaches high",
                )
        # Every constraint of a setting is an interval, so checking both ends checks the range.
        _validated(name, low, "low")
        _validated(name, high, "high")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        object.__setattr__(self, "step", step)
        object.__setattr__(self, "log", bool(self.log))

    def _check_grid(self) -> None:
        name = self.name
        grid = self.grid if isinstance(self.grid, (list, tuple)) else None
        if not grid:
            raise ConfigError(
                "grid must be a non-empty list of values", key=_key(name), hint="Write e.g. grid: [1e-5, 3e-5, 1e-4]"
            )
        values: list[Scalar] = []
        for raw in grid:
            if self.kind == "categorical":
                value = _validated(name, raw, "grid value")
                if not _contains(self.choices, value):
                    raise ConfigError(
                        f"grid value {raw!r} is not among the choices {list(self.choices)}",
                        key=_key(name),
                        hint="List only choices in grid",
                    )
            else:
                number = _number(name, "grid value", raw)
                assert self.low is not None and self.high is not None  # set by _check_range
                if self.kind == "int" and not float(number).is_integer():
                    raise ConfigError(
                        f"grid value {raw!r} of an int dimension is not a whole number",
                        key=_key(name),
                        hint="Use whole numbers",
                    )
                number = int(number) if self.kind == "int" else float(number)
                if not self.low <= number <= self.high:
                    raise ConfigError(
                        f"grid value {raw!r} is outside low..high ({self.low!r}..{self.high!r})",
                        key=_key(name),
                        hint="Widen the range or drop the value",
                    )
                value = number
            if _contains(values, value):
                raise ConfigError(f"grid value {raw!r} is listed twice", key=_key(name), hint="List each value once")
            values.append(value)
        object.__setattr__(self, "grid", tuple(values))

    # --- use -------------------------------------------------------------------------------

    def is_active(self, params: Mapping[str, Any]) -> bool:
        """Whether the condition holds for ``params`` (the values drawn or fixed so far).

        A condition on a setting that is absent (itself inactive) is false, so a chain of
        conditions switches off as a whole.
        """
        return all(param in params and _contains(allowed, params[param]) for param, allowed in self.when.items())

    def suggest(self, trial: optuna.Trial) -> Any:
        """Draw this dimension's value from ``trial``."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def grid_values(self) -> list[Scalar]:
        """The values grid search tries: ``grid``, the choices, the int range or the float steps."""
        if self.grid is not None:
            return list(self.grid)
        if self.kind == "categorical":
            return list(self.choices)
        assert self.low is not None and self.high is not None
        if self.kind == "float" and self.step is None:
            raise ConfigError(
                "a float dimension needs grid: [...] or step for grid search",
                key=_key(self.name),
                hint="List the values to try, e.g. grid: [1e-5, 3e-5, 1e-4]",
            )
        step = self.step or 1
        count = round((self.high - self.low) / step) + 1
        if count > MAX_GRID_VALUES:
            raise ConfigError(
                f"grid search would try {count} values of this dimension (more than {MAX_GRID_VALUES})",
                key=_key(self.name),
                hint="List the values to try with grid: [...], or give a larger step",
            )
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(step)))
        # Computed from low (not accumulated) and rounded, so 0.1 + 0.2 does not become 0.30000000000000004.
        return [round(float(self.low) + i * float(step), 12) for i in range(count)]

    def to_spec(self) -> dict[str, Any]:
        """The YAML/dict form of this dimension, as :meth:`SearchSpace.from_dict` reads it."""
        spec: dict[str, Any] = {"type": self.kind}
        if self.kind == "categorical":
            spec["choices"] = list(self.choices)
        else:
            spec["low"], spec["high"] = self.low, self.high
            if self.log:
                spec["log"] = True
            if self.step is not None:
                spec["step"] = self.step
        if self.when:
            spec["when"] = {p: list(v) if len(v) > 1 else v[0] for p, v in self.when.items()}
        if self.grid is not None:
            spec["grid"] = list(self.grid)
        return spec


def _parse_spec(name: str, spec: Any) -> Dimension | tuple[str, Any]:
    """A dimension from one YAML entry, or ``(name, value)`` for a fixed scalar."""
    if isinstance(spec, (list, tuple)):
        return Dimension(name, "categorical", choices=tuple(spec))
    if not isinstance(spec, Mapping):
        return name, spec
    spec = {str(k): v for k, v in spec.items()}
    kind = spec.get("type")
    if kind is None:
        if "choices" not in spec:
            raise ConfigError(
                "a range needs type: float, int or categorical",
                key=_key(name),
                hint="Write e.g. {type: float, low: 1e-5, high: 1e-3, log: true}; a plain list is a categorical",
            )
        kind = "categorical"
    if kind not in KINDS:
        Dimension(name, kind)  # raises the unknown-type error, with a suggestion
    allowed = _CATEGORICAL_KEYS if kind == "categorical" else _NUMERIC_KEYS
    for extra in spec.keys() - allowed:
        close = difflib.get_close_matches(extra, sorted(allowed), n=1)
        guess = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"{extra!r} does not apply to a {kind} dimension{guess}",
            key=_key(name),
            hint=f"A {kind} dimension takes {', '.join(sorted(allowed))}",
        )
    when = spec.get("when") or {}
    if not isinstance(when, Mapping):
        raise ConfigError(
            f"when must be a mapping of setting to value(s) (got {when!r})",
            key=_key(name),
            hint="Write e.g. when: {strategy: lora} or when: {strategy: [lora, full]}",
        )
    grid = spec.get("grid")
    if grid is not None and not isinstance(grid, (list, tuple)):
        raise ConfigError(f"grid must be a list (got {grid!r})", key=_key(name), hint="Write e.g. grid: [0.0, 0.1]")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"log must be true or false (got {log!r})", key=_key(name), hint="Write log: true")
    choices = spec.get("choices")
    if kind == "categorical" and not isinstance(choices, (list, tuple)):
        raise ConfigError(
            "a categorical dimension needs choices: [...]"
            if choices is None
            else f"choices must be a list (got {choices!r})",
            key=_key(name),
            hint="Write e.g. {type: categorical, choices: [full, lora]}",
        )
    return Dimension(
        name,
        kind,
        low=spec.get("low"),
        high=spec.get("high"),
        log=log,
        step=spec.get("step"),
        choices=tuple(choices or ()),
        when=dict(when),
        grid=None if grid is None else tuple(grid),
    )


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
    """

    def __init__(self, dimensions: Sequence[Dimension] = (), fixed: Mapping[str, Any] | None = None) -> None:
        fixed = dict(fixed or {})
        seen: set[str] = set()
        for dim in dimensions:
            if dim.name in seen or dim.name in fixed:
                raise ConfigError(
                    "the setting appears twice in the space", key=_key(dim.name), hint="Give each setting one range"
                )
            seen.add(dim.name)
        self.fixed: dict[str, Any] = {}
        for name, value in fixed.items():
            if name not in FitConfig.model_fields:
                raise _unknown_setting(name)
            self.fixed[name] = _validated(name, value, "fixed value")
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
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "search space") -> SearchSpace:
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
            if name not in FitConfig.model_fields:
                raise _unknown_setting(name, "" if source == "search space" else f" in {source}")
            parsed = _parse_spec(name, spec)
            if isinstance(parsed, Dimension):
                dimensions.append(parsed)
            else:
                fixed[name] = parsed[1]
        return cls(dimensions, fixed)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> SearchSpace:
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
        return cls.from_dict(data, source=p.name)

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
        return SearchSpace(kept, fixed)

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
        return self.dimensions == other.dimensions and self.fixed == other.fixed

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
