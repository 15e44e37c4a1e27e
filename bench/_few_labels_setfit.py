"""SetFit's own training, run in its own environment for bench/few_labels.py.

SetFit 1.2 is not a tunesmith dependency: bench/few_labels.py installs it in an overlay
environment (``bench/_work/setfit-venv``) and runs this script there. It reads a JSON job file
(a list of jobs: the labeled texts, the test texts, a seed) and writes one result per job:
test accuracy and the seconds ``Trainer.train`` took (not loading, not prediction).

SetFit runs with its default training arguments, as a SetFit user would start: one epoch of
contrastive pairs (batch 16, oversampling), body learning rate 2e-5, a logistic-regression head.

Usage::

    bench/_work/setfit-venv/bin/python bench/_few_labels_setfit.py JOBS.json OUT.json MODEL_DIR
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    jobs_path, out_path, model_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    import numpy as np
    import torch
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    torch.set_num_threads(int(__import__("os").environ.get("BENCH_THREADS", "2")))
    jobs = json.loads(Path(jobs_path).read_text())
    scratch = tempfile.mkdtemp(prefix="setfit-")
    results = []
    for job in jobs:
        model = SetFitModel.from_pretrained(model_dir)
        train = Dataset.from_dict({"text": job["train_texts"], "label": job["train_labels"]})
        # Its checkpoints go to a scratch folder (by default SetFit writes ./checkpoints).
        args = TrainingArguments(
            seed=int(job["seed"]), report_to="none", show_progress_bar=False, output_dir=scratch, save_strategy="no"
        )
        trainer = Trainer(model=model, args=args, train_dataset=train)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        pred = np.asarray(model.predict(job["test_texts"], batch_size=64, show_progress_bar=False))
        acc = float(np.mean(pred == np.asarray(job["test_labels"])))
        results.append({"key": job["key"], "accuracy": acc, "train_seconds": seconds})
        print(json.dumps(results[-1]), flush=True)
    Path(out_path).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
