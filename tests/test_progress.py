"""Progress in logs: plain lines where output is not a terminal, a bar where it is."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tunesmith import progress as progress_module
from tunesmith.progress import Progress, format_duration, is_terminal, progress


def test_plain_lines_at_start_every_interval_each_note_and_end(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    with Progress("decoding images", 10_000, unit="rows", stream=out, terminal=False, interval=60) as bar:
        clock[0] += 30
        bar.advance(1_000)  # 30 s in: no line yet, the last was at the start
        clock[0] += 31
        bar.advance(1_000)  # 61 s in: a line with rows, rate and ETA
        bar.note("epoch 1/3: train_loss 0.5000")
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert "decoding images: started, 0/10,000 rows (0%)" in lines[0]
    assert re.search(r"2,000/10,000 rows \(20%\), 32\.8 rows/s, eta 4m04s", lines[1])
    assert "epoch 1/3: train_loss 0.5000; 2,000/10,000 rows" in lines[2]
    assert "done, 2,000 rows in 1m01s" in lines[3]


def test_disabled_progress_prints_nothing() -> None:
    out = io.StringIO()
    with progress("x", 5, enabled=False, stream=out) as bar:
        bar.advance(5)
        bar.note("hello")
    assert out.getvalue() == ""


def test_a_failure_is_reported_in_the_last_line() -> None:
    out = io.StringIO()
    with pytest.raises(KeyError), Progress("work", 4, stream=out, terminal=False):
        raise KeyError("x")
    assert "stopped after 0 items" in out.getvalue() and "KeyError" in out.getvalue()


def test_terminal_detection_can_be_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNESMITH_PROGRESS", "plain")
    assert not is_terminal()
    monkeypatch.setenv("TUNESMITH_PROGRESS", "bar")
    assert is_terminal()
    monkeypatch.delenv("TUNESMITH_PROGRESS")
    assert not is_terminal(io.StringIO())


def test_durations_read_well() -> None:
    assert [format_duration(s) for s in (4.2, 75, 3725)] == ["4s", "1m15s", "1h02m"]


def test_fit_with_output_sent_to_a_file_prints_plain_progress(tmp_path: Path) -> None:
    # a new user runs `tunesmith fit photos/ > log 2>&1`: the log must show rows, ETA and each epoch
    rng = np.random.default_rng(0)
    for i in range(60):
        c = i % 3
        x = np.zeros((16, 16), dtype=np.float32)
        x[c * 5 : (c + 1) * 5, :] = 1.0
        img = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
        folder = tmp_path / "photos" / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"{i}.png")
    log = tmp_path / "log.txt"
    with log.open("w") as fh:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "tunesmith.cli",
                "fit",
                str(tmp_path / "photos"),
                "-o",
                str(tmp_path / "model"),
                "backbone=tiny-image",
                "image_size=16",
                "epochs=2",
                "batch_size=16",
                "runs_dir=",
                "baselines=false",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)},
            timeout=600,
            check=False,
        )
    text = log.read_text()
    assert proc.returncode == 0, text
    assert re.search(r"decoding images: started, 0/60 images", text), text
    assert re.search(r"epoch 1/2: train_loss \d\.\d{4}", text), text
    assert re.search(r"epoch 2/2: .*valid_", text), text
    assert "\x1b[" not in text, "no terminal control codes in a log"
