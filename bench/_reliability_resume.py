"""Resume after SIGKILL, measured on real models: are the final weights bit-identical?

For each kind (text: all-MiniLM-L6-v2 on Rotten Tomatoes reviews; image: EfficientNet-Lite0 on
MNIST digits; tabular: the neural network on UCI Adult) the same ``tunesmith fit`` command runs
twice in child processes:

* **plain**: never stopped;
* **killed**: killed with SIGKILL at a random moment after its first checkpoint (seeded), then
  ``tunesmith fit --resume RUN`` killed again at a random moment after a newer checkpoint, then
  resumed once more to the end.

The final model folders are compared tensor by tensor (``torch.equal`` on every tensor of every
``.safetensors`` file). Run as part of ``bench/reliability.py``, or alone::

    python bench/_reliability_resume.py --kinds text,image,tabular
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import BENCH_DIR, format_table

WORK = BENCH_DIR / "_work" / "reliability_resume"
KINDS = ("text", "image", "tabular")


def _prepare(kind: str) -> tuple[list[str], list[str]]:
    """(data arguments, settings) of the kind's fit; data files are written under bench/_work."""
    WORK.mkdir(parents=True, exist_ok=True)
    if kind == "text":
        from tunesmith.datasets import rotten_tomatoes

        path = WORK / "reviews.csv"
        if not path.exists():
            df = rotten_tomatoes().sample(n=640, random_state=0)[["text", "label"]]
            df.to_csv(path, index=False)
        settings = ["backbone=minilm-l6", "epochs=2", "batch_size=16", "baselines=false", "checkpoint_every_steps=6"]
        return [str(path), "-t", "label"], settings
    if kind == "image":
        import numpy as np
        from PIL import Image

        from tunesmith.datasets import mnist_5k

        root = WORK / "digits"
        if not root.exists():
            images, labels = mnist_5k()
            # the digits come sorted by label: take a random 480 of them
            for i in np.random.default_rng(0).permutation(len(labels))[:480]:
                folder = root / str(int(labels[i]))
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[i]).convert("RGB").save(folder / f"{i}.png")
        settings = ["backbone=efficientnet-lite0", "image_size=64", "epochs=2", "batch_size=32"]
        return [str(root)], [*settings, "checkpoint_every_steps=3"]
    from tunesmith.datasets import adult

    path = WORK / "adult.csv"
    if not path.exists():
        adult()[0].sample(n=8000, random_state=0).to_csv(path, index=False)
    settings = ["model=neural", "epochs=10", "batch_size=128", "checkpoint_every_steps=15"]
    return [str(path), "-t", "income", "--kind", "tabular"], settings


def _command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "tunesmith.cli", "fit", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def _steps(runs: Path) -> list[int]:
    # The fit renames and deletes checkpoint folders while this looks: a vanished one is skipped.
    for _ in range(10):
        try:
            return [int(p.name[5:]) for p in runs.glob("*/checkpoints/**/step-*")]
        except FileNotFoundError:
            continue
    return []


def _run(
    args: list[str], runs: Path, log: Path, kill_after: float | None = None, newer_than: int = -1
) -> dict[str, Any]:
    """Run the fit; with ``kill_after``, SIGKILL it that many seconds after a checkpoint newer than
    ``newer_than`` appeared. Returns what happened and when the first checkpoint appeared."""
    started = time.monotonic()
    with log.open("ab") as out:
        proc = subprocess.Popen(_command(args), env=_env(), stdout=out, stderr=subprocess.STDOUT)
        seen_at = last_at = None
        newest = newer_than
        while proc.poll() is None:
            steps = _steps(runs)
            if steps and max(steps) > newest:
                newest = max(steps)
                last_at = time.monotonic()
                seen_at = seen_at or last_at
            if kill_after is not None and seen_at is not None and time.monotonic() - seen_at >= kill_after:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return {"killed": True, "newest_checkpoint_step": max(_steps(runs) or [0]), "after_s": kill_after}
            time.sleep(0.02)
    ended = time.monotonic()
    return {
        "killed": False,
        "exit": proc.returncode,
        "seconds": ended - started,
        # From the first checkpoint to the last: when the network trained.
        "training_window_s": last_at - seen_at if seen_at is not None and last_at is not None else None,
    }


def _weights(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return {
        f"{p.relative_to(folder)}:{k}": v
        for p in sorted(folder.rglob("*.safetensors"))
        for k, v in load_file(p).items()
    }


def run_kind(kind: str, seed: int = 0) -> dict[str, Any]:
    """Plain fit vs killed-twice-and-resumed fit of one kind; the comparison of their weights."""
    import shutil

    import torch

    rng = random.Random(f"{seed}-{kind}")
    data, settings = _prepare(kind)
    base = WORK / kind
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    log = base / "log.txt"
    common = [*data, *settings, "progress=false"]
    plain_args = [*common, f"runs_dir={base / 'plain'}", "-o", str(base / "plain_model")]
    # keep_checkpoints so the plain run's checkpoints show when training ran (not start-up)
    plain = _run([*plain_args, "keep_checkpoints=true"], base / "plain", log)
    if plain["exit"] != 0 or not plain["training_window_s"]:
        return {"kind": kind, "status": "failed", "error": f"plain fit: {plain}; see {log.relative_to(BENCH_DIR)}"}
    window = float(plain["training_window_s"])
    runs = base / "killed"
    out_model = base / "killed_model"
    kills: list[dict[str, Any]] = []
    # The first kill lands in the first half of training (after its first checkpoint), the
    # second a little after the resumed run wrote a newer checkpoint; then it runs to the end.
    first = _run([*common, f"runs_dir={runs}", "-o", str(out_model)], runs, log, rng.uniform(0.0, 0.5) * window)
    kills.append(first)
    if not first["killed"]:
        return {"kind": kind, "status": "failed", "error": "the fit ended before it could be killed", "kills": kills}
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    resume_args = [*data, "--resume", str(run), "-o", str(out_model)]
    second = _run(resume_args, runs, log, rng.uniform(0.0, 0.3) * window, first["newest_checkpoint_step"])
    kills.append(second)
    if second["killed"]:
        last = _run(resume_args, runs, log)
        if last["exit"] != 0:
            return {"kind": kind, "status": "failed", "error": f"resumed fit exited {last['exit']}", "kills": kills}
    a, b = _weights(base / "plain_model"), _weights(out_model)
    identical = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return {
        "kind": kind,
        "status": "ok",
        "bit_identical": bool(identical),
        "killed_twice": all(k.get("killed") for k in kills),
        "tensors_compared": len(a),
        "kills": kills,
        "plain_fit_seconds": round(float(plain["seconds"]), 1),
        "plain_training_window_s": round(window, 1),
        "checkpoints_left": sorted(str(p.relative_to(run)) for p in run.glob("checkpoints/**/step-*")),
    }


def run(kinds: tuple[str, ...] = KINDS, seed: int = 0) -> dict[str, Any]:
    rows = [run_kind(kind, seed) for kind in kinds]
    return {
        "resume_bit_identical": {r["kind"]: bool(r.get("bit_identical")) for r in rows},
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = run(tuple(args.kinds.split(",")), args.seed)
    columns = [("kind", "kind", ""), ("bit_identical", "bit-identical", ""), ("tensors_compared", "tensors", "d")]
    print(format_table(result["rows"], columns))


if __name__ == "__main__":
    main()
