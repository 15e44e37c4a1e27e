"""The run report, which is also the model card: Markdown that says what was trained,
on what, how well it does against cheap baselines, and how to load it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from tunesmith.runs.metric_names import METRIC_DIRECTIONS, PRIMARY_METRIC, SMALL_TEST_ROWS, small_test_warning

__all__ = ["render_report"]

_COLUMNS = {
    "classification": ("accuracy", "f1_macro", "roc_auc", "log_loss"),
    "regression": ("mae", "rmse", "r2"),
}
_TASK_WORDS = {
    "binary": "binary classification",
    "multiclass": "multiclass classification",
    "regression": "regression",
}
_BASELINE_NAMES = {
    "majority": "majority class",
    "tfidf": "TF-IDF + linear",
    "frozen": "frozen embeddings + linear",
}
# per kind of model: what it reads, and the argument of the loading example
_KIND_INPUTS = {
    "text": ("text", '["some text"]'),
    "image": ("images", '["photo.jpg"]'),
    "tabular": ("rows", 'pandas.read_csv("new_rows.csv")'),
}
# settings that describe the run's bookkeeping, not the model; left out of the card's table
_CONFIG_SKIP = {"progress", "runs_dir", "run_name"}


def _cell(value: Any) -> str:
    """Markdown-table-safe text for one value."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value) if value else "-"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_cell(v)}" for k, v in value.items()) if value else "-"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric_from: int = 1) -> list[str]:
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(c if isinstance(c, str) else _cell(c) for c in row) + " |" for row in rows]
    return out


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _duration(seconds: Any) -> str:
    s = _num(seconds)
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f} s"
    minutes, sec = divmod(round(s), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _baseline_name(key: str, metrics: Mapping[str, Any]) -> str:
    name = metrics.get("model")
    return str(name) if name else _BASELINE_NAMES.get(key, key)


def _interval(value: Any) -> tuple[float, float] | None:
    """``[lo, hi]`` as two finite floats, or None."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        lo, hi = _num(value[0]), _num(value[1])
        if lo is not None and hi is not None:
            return lo, hi
    return None


def _metric_cell(metrics: Mapping[str, Any], name: str) -> Any:
    """``0.842 [0.822, 0.861]`` when the metric has a ``<name>_ci`` interval, else the plain value."""
    value, ci = _num(metrics.get(name)), _interval(metrics.get(f"{name}_ci"))
    if value is None or ci is None:
        return metrics.get(name)
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _gain_verdict(
    primary: str,
    tuned: Mapping[str, Any],
    baseline: Mapping[str, Any],
    gain: Mapping[str, Any] | None,
    points: bool,
) -> str:
    """The part of a gain line that says whether the gain is larger than the noise."""
    if isinstance(gain, Mapping) and gain.get("verdict"):
        ci = _interval(gain.get("ci"))
        if ci is not None and gain.get("paired", True):
            lo, hi = (f"{100 * ci[0]:+.2f}", f"{100 * ci[1]:+.2f}") if points else (f"{ci[0]:+.4g}", f"{ci[1]:+.4g}")
            return f"95% interval [{lo}, {hi}]: {gain['verdict']} (paired bootstrap)"
        return f"{gain['verdict']} (unpaired: the baseline's outputs were not kept, so only intervals are compared)"
    mine, theirs = _interval(tuned.get(f"{primary}_ci")), _interval(baseline.get(f"{primary}_ci"))
    if mine is None or theirs is None:
        return ""
    clear = theirs[1] < mine[0] or theirs[0] > mine[1]
    verdict = "larger than the noise" if clear else "within the noise"
    return f"{verdict} (unpaired: the two 95% intervals {'do not ' if clear else ''}overlap)"


def _gain_lines(
    task: str,
    tuned: Mapping[str, Any],
    baselines: Mapping[str, Mapping[str, Any]],
    gains: Mapping[str, Any] | None = None,
) -> list[str]:
    primary = PRIMARY_METRIC.get(task, "accuracy")
    a = _num(tuned.get(primary))
    if a is None or not baselines:
        return []
    gains = gains or {}
    classification = task != "regression"
    better_word = "higher" if METRIC_DIRECTIONS[primary] == "max" else "lower"
    if classification:
        lines = [
            f"Fine-tuned minus baseline on **{primary}** (test split, in percentage points; {better_word} is better):",
            "",
        ]
    else:
        lines = [
            f"Fine-tuned minus baseline on **{primary}** (test split, in target units; {better_word} is better):",
            "",
        ]
    losers = []
    noisy = []
    for key, m in baselines.items():
        b = _num(m.get(primary))
        name = _baseline_name(key, m)
        if b is None:
            lines.append(f"- vs {name}: not available")
            continue
        diff = a - b
        if classification:
            text = f"{diff * 100:+.2f} points"
        else:
            rel = f", {diff / b * 100:+.1f}%" if b else ""
            text = f"{diff:+.4g}{rel}"
        verdict = _gain_verdict(primary, tuned, m, gains.get(key), classification)
        lines.append(f"- vs {name}: **{text}** ({a:.4f} vs {b:.4f})" + (f"; {verdict}" if verdict else ""))
        if verdict.startswith("within the noise"):
            noisy.append(name)
        improved = diff > 0 if METRIC_DIRECTIONS[primary] == "max" else diff < 0
        if not improved:
            losers.append(name)
    if losers:
        lines += [
            "",
            f"**Note:** the fine-tuned model does not beat {', '.join(losers)} on {primary}. "
            "The cheaper model may be the better choice; more data, more epochs or another "
            "learning rate may change this.",
        ]
    if noisy:
        lines += [
            "",
            f"**Within the noise:** the difference from {', '.join(noisy)} could come from which rows "
            "happened to land in the test split; this test split cannot tell these models apart.",
        ]
    return lines


def _drop_summary(report: Any) -> str:
    if not isinstance(report, Mapping):
        return _cell(report)
    if report.get("summary"):
        return _cell(report["summary"])
    total = report.get("dropped_total")
    parts = []
    if total is not None:
        parts.append(f"{total} row(s) dropped")
    for key in ("reasons", "by_reason", "dropped"):
        reasons = report.get(key)
        if isinstance(reasons, Mapping) and reasons:
            parts.append(", ".join(f"{k}: {v}" for k, v in reasons.items()))
    if not parts:
        parts = [f"{k}: {_cell(v)}" for k, v in report.items() if not isinstance(v, (Mapping, list))]
    return "; ".join(parts) if parts else "none"


def _image(images: Mapping[str, Any], key: str, alt: str) -> list[str]:
    name = images.get(key)
    return [f"![{alt}]({name})", ""] if name else []


def _warnings(
    info: Mapping[str, Any], tuned: Mapping[str, Any], baselines: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """The report's warnings: those given, plus the small-test one whenever the split is small."""
    given = [str(w) for w in info.get("warnings") or [] if w]
    n = tuned.get("n") or next((m.get("n") for m in baselines.values() if m.get("n")), None)
    if isinstance(n, int) and not isinstance(n, bool) and 0 < n < SMALL_TEST_ROWS:
        small = small_test_warning(n)
        if small not in given:
            given.insert(0, small)
    return given


def render_report(info: Mapping[str, Any]) -> str:
    """Render the run report / model card as Markdown.

    Every key is optional; a section whose data is missing is left out.

    Args:
        info: a mapping with these keys

            - ``"title"`` (str): the heading.
            - ``"task"`` (str): ``"binary"``, ``"multiclass"`` or ``"regression"``; picks the
              metric columns (accuracy, f1_macro, roc_auc, log_loss or mae, rmse, r2) and
              the primary metric for gains (accuracy, or rmse).
            - ``"backbone"`` (str), ``"strategy"`` (str): what was fine-tuned and how.
            - ``"labels"`` (list[str]): class names, in output order.
            - ``"metrics"`` (dict): the fine-tuned model's test metrics, as returned by
              :func:`tunesmith.evaluate.metrics.compute_metrics` (``per_class``,
              ``confusion_matrix`` and ``n`` are used when present).
            - ``"baselines"`` (dict[str, dict]): baseline key → metrics of the same form,
              optionally with ``"model"`` (its human name) and ``"fit_seconds"``.
            - ``"config"`` (dict): every setting of the run (the hyperparameter table).
            - ``"data"`` (dict): ``file``, ``sha256``, ``rows`` (split → count, e.g.
              ``{"after_cleaning": 48, "train": 38, "valid": 5, "test": 5}``),
              ``dropped`` (where → drop report with ``summary`` or ``dropped_total``),
              ``split`` (``{"strategy": .., "notes": [..]}``), ``target``, ``text_columns``.
            - ``"training"`` (dict): ``epochs_run``, ``best_epoch``, ``monitor``,
              ``stopped_early``, ``stop_reason``, ``train_seconds``,
              ``train_examples_per_s``, ``parameters`` (``{"trainable": .., "total": ..}``).
            - ``"environment"`` (dict): as from :func:`tunesmith.runs.record.environment_info`.
            - ``"images"`` (dict): file names relative to the report, under
              ``"learning_curves"``, ``"confusion_matrix"``, ``"residuals"``.
            - ``"model_path"`` (str): shown in the loading example (default ``path/to/model``).

    Returns:
        The Markdown text, ending with a newline.
    """
    task = str(info.get("task") or "")
    kind = "regression" if task == "regression" else "classification"
    tuned: Mapping[str, Any] = info.get("metrics") or {}
    baselines: Mapping[str, Mapping[str, Any]] = info.get("baselines") or {}
    config: Mapping[str, Any] = info.get("config") or {}
    data: Mapping[str, Any] = info.get("data") or {}
    training: Mapping[str, Any] = info.get("training") or {}
    env: Mapping[str, Any] = info.get("environment") or {}
    images: Mapping[str, Any] = info.get("images") or {}
    labels = [str(x) for x in info.get("labels") or []]
    backbone = info.get("backbone") or config.get("backbone")
    strategy = info.get("strategy") or config.get("strategy")

    out: list[str] = [f"# {info.get('title') or 'tunesmith model'}", ""]
    out += [f"> **Warning:** {w}\n" for w in _warnings(info, tuned, baselines)]

    # --- summary line ---------------------------------------------------------------------
    facts = []
    if task:
        facts.append(f"**Task:** {_TASK_WORDS.get(task, task)}")
    if backbone:
        facts.append(f"**Backbone:** `{backbone}`")
    if strategy:
        facts.append(f"**Strategy:** {strategy}")
    rows: Mapping[str, Any] = data["rows"] if isinstance(data.get("rows"), Mapping) else {}
    if rows.get("train") is not None:
        facts.append(
            f"**Train rows:** {rows['train']:,}"
            if isinstance(rows["train"], int)
            else f"**Train rows:** {rows['train']}"
        )
    if training.get("best_epoch") is not None:
        of = f" of {training['epochs_run']}" if training.get("epochs_run") is not None else ""
        facts.append(f"**Best epoch:** {training['best_epoch']}{of}")
    if facts:
        out += [" · ".join(facts), ""]
    if labels and kind == "classification":
        out += [f"**Classes ({len(labels)}):** " + ", ".join(f"`{_cell(x)}`" for x in labels), ""]

    # --- test metrics vs baselines ----------------------------------------------------------
    if tuned or baselines:
        cols = _COLUMNS[kind]
        out += ["## Test metrics: fine-tuned vs baselines", ""]
        n = tuned.get("n") or next((m.get("n") for m in baselines.values() if m.get("n")), None)
        if n:
            out += [
                f"All models are scored on the same held-out test split ({n} rows). "
                "Baselines are fitted on the training split only.",
                "",
            ]
        table_rows: list[list[Any]] = []
        if tuned:
            what = ", ".join(str(x) for x in (backbone, strategy) if x)
            table_rows.append(
                [f"**fine-tuned**{f' ({_cell(what)})' if what else ''}", *[_metric_cell(tuned, c) for c in cols]]
            )
        for key, m in baselines.items():
            table_rows.append([_cell(_baseline_name(key, m)), *[_metric_cell(m, c) for c in cols]])
        out += [*_table(["model", *cols], table_rows), ""]
        if any(_interval(m.get(f"{c}_ci")) for m in (tuned, *baselines.values()) for c in cols):
            out += ["Brackets: 95% bootstrap confidence interval over the test rows.", ""]
        gains = _gain_lines(task, tuned, baselines, info.get("gains")) if tuned else []
        if gains:
            out += ["### Gain over baselines", "", *gains, ""]
        out += _image(images, "residuals", "residuals")

    # --- per class ---------------------------------------------------------------------------
    per_class = tuned.get("per_class")
    if isinstance(per_class, Mapping) and per_class:
        out += ["## Per-class metrics (test)", ""]
        pc_rows = [
            [_cell(name), m.get("precision"), m.get("recall"), m.get("f1"), m.get("support")]
            for name, m in per_class.items()
        ]
        out += [*_table(["class", "precision", "recall", "f1", "support"], pc_rows), ""]
    cm = tuned.get("confusion_matrix")
    names = labels or [str(x) for x in (per_class or {})]
    if isinstance(cm, list) and cm and len(cm) == len(names) and len(names) <= 20:
        out += ["### Confusion matrix (rows: true, columns: predicted)", ""]
        out += [
            *_table(
                ["true \\ predicted", *[_cell(x) for x in names]],
                [[_cell(name), *row] for name, row in zip(names, cm, strict=False)],
            ),
            "",
        ]
    out += _image(images, "confusion_matrix", "confusion matrix")

    # --- data --------------------------------------------------------------------------------
    if data:
        out += ["## Data", ""]
        if data.get("file") or data.get("sha256"):
            sha = str(data.get("sha256") or "")
            file = data.get("file") or "an in-memory DataFrame"
            out.append(f"- file: `{file}`" + (f" (sha256 `{sha[:12]}`)" if sha else ""))
        if data.get("target"):
            out.append(f"- target column: `{data['target']}`")
        if data.get("text_columns"):
            out.append("- text column(s): " + ", ".join(f"`{c}`" for c in data["text_columns"]))
        split = data.get("split")
        if isinstance(split, Mapping) and split.get("strategy"):
            notes = split.get("notes") or []
            note = f" ({'; '.join(map(str, notes))})" if notes else ""
            out.append(f"- split: {split['strategy']}{note}")
        dropped = data.get("dropped")
        if isinstance(dropped, Mapping) and dropped:
            for where, report in dropped.items():
                out.append(f"- dropped ({where}): {_drop_summary(report)}")
        elif dropped is not None and not isinstance(dropped, Mapping):
            out.append(f"- dropped: {_cell(dropped)}")
        cleaning = data.get("cleaning")
        if isinstance(cleaning, Mapping):
            for action in cleaning.get("actions") or []:
                if isinstance(action, Mapping) and action.get("count"):
                    out.append(f"- cleaning: {_cell(action.get('description'))}")
        out.append("")
        if rows:
            out += [*_table(["split", "rows"], [[_cell(k), v] for k, v in rows.items()]), ""]

    # --- training ----------------------------------------------------------------------------
    if training or config:
        out += ["## Training", ""]
        if training:
            if training.get("epochs_run") is not None:
                out.append(
                    f"- epochs run: {training['epochs_run']}"
                    + (f" (of {config['epochs']} allowed)" if config.get("epochs") else "")
                )
            if training.get("best_epoch") is not None:
                mon = f" by {training['monitor']}" if training.get("monitor") else ""
                out.append(f"- best epoch{mon}: {training['best_epoch']}")
            if training.get("stopped_early"):
                out.append(f"- stopped early: {training.get('stop_reason') or 'yes'}")
            elif "stopped_early" in training:
                out.append("- stopped early: no")
            if training.get("train_seconds") is not None:
                out.append(f"- training time: {_duration(training['train_seconds'])}")
            speed = _num(training.get("train_examples_per_s"))
            if speed is not None:
                out.append(f"- throughput: {speed:,.1f} examples/s")
            params = training.get("parameters")
            if isinstance(params, Mapping) and params.get("total"):
                t, total = params.get("trainable") or 0, params["total"]
                out.append(f"- parameters: {t:,} trainable of {total:,} ({100 * t / total:.2f}%)")
            out.append("")
        out += _image(images, "learning_curves", "learning curves")
        if config:
            out += ["### Hyperparameters", ""]
            out += [
                *_table(
                    ["setting", "value"],
                    [[f"`{k}`", _cell(v)] for k, v in config.items() if k not in _CONFIG_SKIP],
                    numeric_from=2,
                ),
                "",
            ]

    # --- environment -------------------------------------------------------------------------
    if env:
        out += ["## Environment", ""]
        hw = env.get("hardware") if isinstance(env.get("hardware"), Mapping) else {}
        if env.get("python"):
            out.append(f"- Python {env['python']} on {env.get('platform') or 'unknown platform'}")
        if hw:
            model = f" ({hw['cpu_model']})" if hw.get("cpu_model") else ""
            cpu = f"{hw.get('cpu_count') or '?'} CPU(s){model}"
            mem = f", {hw['memory_total_gib']} GiB RAM" if hw.get("memory_total_gib") else ""
            threads = f", torch threads: {hw['torch_threads']}" if hw.get("torch_threads") else ""
            out.append(f"- hardware: {cpu}{mem}{threads}")
            gpus = ", ".join(map(str, hw.get("cuda_devices") or [])) or "none available"
            out.append(f"- GPU: {gpus}")
        if env.get("seed") is not None:
            out.append(f"- seed: {env['seed']}")
        out.append("")
        packages = env.get("packages")
        if isinstance(packages, Mapping) and packages:
            pkg_rows = [[f"`{k}`", v if v is not None else "not installed"] for k, v in packages.items()]
            out += [*_table(["package", "version"], pkg_rows, numeric_from=2), ""]

    # --- model card boilerplate ---------------------------------------------------------------
    model_kind = str(info.get("kind") or "text")
    noun, example = _KIND_INPUTS.get(model_kind, ("data", "data"))
    has_ci = any(str(k).endswith("_ci") for k in tuned)
    out += [
        "## Intended use and limitations",
        "",
        f"- Intended for {_TASK_WORDS.get(task, 'prediction')} on {noun} like the training data"
        + (f" (`{data['file']}`)" if data.get("file") else "")
        + ". Performance on other domains, languages or time periods is unknown: measure it first.",
        "- Test metrics come from one held-out split; small test sets give noisy estimates"
        + (" (the brackets above show how noisy)." if has_ci else "."),
        "- The model inherits the biases of its pre-trained backbone and of the training labels; "
        "review errors per class (above) before relying on it for decisions about people.",
        *(
            [
                "- Texts longer than the training `max_length`"
                + (f" ({config['max_length']} tokens)" if config.get("max_length") else "")
                + " are truncated."
            ]
            if model_kind == "text"
            else []
        ),
        "",
        "## How to load",
        "",
        "```python",
        "import tunesmith",
        "",
        f'model = tunesmith.load("{info.get("model_path") or "path/to/model"}")',
        f"model.predict({example})"
        + ("" if kind == "regression" else f"\nmodel.predict_proba({example})  # one column per class"),
        "```",
        "",
        "The model folder holds only safetensors weights and JSON/YAML/text files (no pickle); "
        "`tunesmith.load` refuses folders that hold anything else it could execute.",
        "",
    ]
    return "\n".join(out).rstrip("\n") + "\n"
