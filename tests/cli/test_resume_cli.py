"""``tunesmith fit --resume RUN`` after the fit's process was killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.cli.test_cli import cli
from tests.conftest import make_reviews

SETTINGS = [
    "backbone=tiny-text",
    "epochs=4",
    "batch_size=4",
    "max_length=32",
    "num_threads=1",
    "baselines=false",
    "progress=false",
    "checkpoint_every_steps=1",
    "dropout=0.1",
]


def _fit(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tunesmith.cli", "fit", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _weights(model: Path) -> dict[str, torch.Tensor]:
    return load_file(model / "model.safetensors")


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_fit_killed_with_sigkill_resumes_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_reviews(64).to_csv(tmp_path / "reviews.csv", index=False)
    plain = _fit(["reviews.csv", "-t", "label", *SETTINGS, "runs_dir=plain"], tmp_path)
    killed = _fit(["reviews.csv", "-t", "label", *SETTINGS, "runs_dir=killed"], tmp_path)
    # Kill it hard once it wrote a few checkpoints, in the middle of training.
    deadline = time.monotonic() + 120
    run = None
    while time.monotonic() < deadline and killed.poll() is None:
        found = list((tmp_path / "killed").glob("*/checkpoints/step-*"))
        if found and max(int(p.name[5:]) for p in found) >= 5:
            run = found[0].parent.parent
            break
        time.sleep(0.02)
    assert run is not None and killed.poll() is None, killed.communicate()[0].decode()[-2000:]
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert plain.wait(timeout=300) == 0, plain.communicate()[0].decode()[-2000:]
    assert not (run / "model").exists()

    resumed = _fit(["reviews.csv", "-t", "label", "--resume", str(run.relative_to(tmp_path))], tmp_path)
    out = resumed.communicate(timeout=300)[0].decode()
    assert resumed.returncode == 0, out[-2000:]
    (plain_run,) = (tmp_path / "plain").iterdir()
    a, b = _weights(plain_run / "model"), _weights(run / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (run / "checkpoints").exists()

    # Another learning rate on top of the run's settings is refused, without a traceback.
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, "fit", "reviews.csv", "-t", "label", "lr=0.5", "--resume", str(run))
    assert code != 0 and "settings differ from the run being resumed (lr:" in err and "Traceback" not in err
    code, _, err = cli(capsys, "fit", "reviews.csv", "-t", "label", "--resume", str(tmp_path / "nowhere"))
    assert code != 0 and "no run folder here" in err
