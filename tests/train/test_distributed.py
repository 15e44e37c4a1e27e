"""A 2-process CPU fit through torchrun: the loop is the same code on one or many processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("extra", [{}, {"gradual_unfreeze": True, "grad_accum_steps": 2}], ids=["full", "gradual"])
def test_two_process_gloo_fit(tmp_path, extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "tests" / "dist_fit.py"),
        str(tmp_path / "out"),
        json.dumps(extra),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    infos = [json.loads((tmp_path / f"out.{r}.json").read_text()) for r in range(2)]
    assert {i["world_size"] for i in infos} == {2}
    assert {i["backend"] for i in infos} == {"gloo"}
    # gradients are all-reduced, so both processes end with the same weights
    assert infos[0]["weights"] == infos[1]["weights"]
    # each process saw its own half of every epoch; together they covered the train split twice
    assert infos[0]["examples"] >= 2 * infos[0]["train_rows"]
