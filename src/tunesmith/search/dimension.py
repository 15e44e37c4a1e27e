"""One searched setting of a hyperparameter search space, and how its YAML form is read.

The YAML form, the checks made when a space is read and what ``when`` does are described in
:mod:`tunesmith.search.space`, which builds spaces out of these dimensions.
"""

from __future__ import annotations

import contextlib
import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import BaseModel

from tunesmith.config import FitConfig, _closest, validate_settings
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


def is_setting(name: str, settings: type[BaseModel] = FitConfig) -> bool:
    """Whether ``name`` is a setting of ``settings``: a field, or ``field.key`` inside a mapping field.

    The dotted form reaches into settings that hold a mapping (the recommender's
    ``model_params.l2`` or ``seq.dim``); such values are checked when a trial builds its model.
    """
    root, dot, leaf = name.partition(".")
    if not dot:
        return name in settings.model_fields
    field_info = settings.model_fields.get(root)
    if field_info is None or not leaf:
        return False
    annotation = field_info.annotation
    args = get_args(annotation) or (annotation,)
    return any(a is dict or getattr(a, "__origin__", None) is dict for a in args)


def nest(params: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``params`` with dotted names (``model_params.l2``) merged into their mapping setting.

    The mapping starts from ``base``'s value of that setting, so a search changes one key of it
    and keeps the rest.
    """
    out: dict[str, Any] = {k: v for k, v in params.items() if "." not in k}
    for name, value in params.items():
        root, dot, leaf = name.partition(".")
        if not dot:
            continue
        if root not in out:
            start = (base or {}).get(root)
            out[root] = dict(start) if isinstance(start, Mapping) else {}
        out[root][leaf] = value
    return out


def _whole_numbers_only(name: str, settings: type[BaseModel] = FitConfig) -> bool:
    """Whether the setting takes ints but not floats (a float range would be refused mid-search)."""
    if "." in name:
        return False
    annotation = settings.model_fields[name].annotation
    args = get_args(annotation) or (annotation,)
    return int in args and float not in args


def _validated(name: str, value: Any, what: str, settings: type[BaseModel] = FitConfig) -> Any:
    """``value`` as the setting would hold it, or a ConfigError naming ``search_space.<name>``.

    Checked through the kind's ``settings`` model, so that the space and a fit share one set of rules.
    The value is normalised to the setting's type where that is a plain scalar (YAML's
    ``"1e-5"`` becomes ``1e-05``, ``"16"`` becomes ``16``), so Optuna stores numbers.
    """
    root = name.partition(".")[0]
    try:
        config = validate_settings(settings, nest({name: value}))
    except ConfigError as exc:
        if exc.key != root:
            # A cross-setting conflict with some *default* (valid_size: 0.95 against the
            # default test_size), or another setting the model requires: the trial's other
            # settings decide, so it is checked per trial.
            return value
        raise ConfigError(
            f"{what} {value!r} is refused by the setting: {exc.message}",
            key=_key(name),
            hint="Choose values the setting accepts (see docs/config.md)",
        ) from None
    if "." in name:
        return value
    normalised = getattr(config, name)
    return normalised if _is_scalar(normalised) else value


def _unknown_setting(name: str, where: str = "", settings: type[BaseModel] = FitConfig) -> ConfigError:
    guess = _closest(name, tuple(settings.model_fields))
    # The suggestion is the fix; without one, point at the list of settings.
    hint = None if guess else "A search space maps settings (see docs/config.md) to ranges"
    return ConfigError(f"unknown setting{where}{guess}", key=_key(name), hint=hint)


def _normalised_or_raw(name: str, value: Any, settings: type[BaseModel]) -> Any:
    try:
        return _validated(name, value, "value", settings)
    except ConfigError:
        return value


@dataclass(frozen=True)
class Dimension:
    """One searched setting: a float or int range, or a categorical choice.

    Attributes:
        name: the setting it draws (a field of ``settings``).
        kind: ``"float"``, ``"int"`` or ``"categorical"``.
        low, high: inclusive bounds of a float or int range.
        log: draw on a log scale (bounds must be positive; no ``step``).
        step: spacing of the drawn values (``None``: continuous float, or 1 for int).
        choices: the values of a categorical dimension.
        when: condition ``{setting: allowed values}``; the dimension is drawn only while
            every named setting takes one of its allowed values. Empty: always drawn.
        grid: explicit values for grid search (required for a float without ``step``).
        settings: the kind's settings model the values are checked against (default: the
            text kind's :class:`~tunesmith.config.FitConfig`).

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
    settings: type[BaseModel] = field(default=FitConfig, compare=False, repr=False)

    def __post_init__(self) -> None:
        name = self.name
        if not is_setting(name, self.settings):
            raise _unknown_setting(name, settings=self.settings)
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
            if is_setting(str(param), self.settings):
                # Normalised like the choices it is compared with ("16" -> 16); a value the
                # setting refuses is left as is and reported by SearchSpace as not a choice.
                values = tuple(_normalised_or_raw(str(param), v, self.settings) for v in values)
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
        choices = tuple(_validated(name, c, "choice", self.settings) for c in self.choices)
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
            if _whole_numbers_only(name, self.settings):
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
        _validated(name, low, "low", self.settings)
        _validated(name, high, "high", self.settings)
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
                value = _validated(name, raw, "grid value", self.settings)
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


def parse_spec(name: str, spec: Any, settings: type[BaseModel] = FitConfig) -> Dimension | tuple[str, Any]:
    """A dimension from one YAML entry, or ``(name, value)`` for a fixed scalar."""
    if isinstance(spec, (list, tuple)):
        return Dimension(name, "categorical", choices=tuple(spec), settings=settings)
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
        Dimension(name, kind, settings=settings)  # raises the unknown-type error, with a suggestion
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
        settings=settings,
    )
