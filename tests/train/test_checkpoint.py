"""Checkpoints: a fit stopped at any batch and resumed ends with the same weights, bit for bit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tunesmith.errors import ArtifactError
from tunesmith.train.averaging import WeightAverage
from tunesmith.train.callbacks import Callback, EarlyStopping, TrainState
from tunesmith.train.checkpoint import META, TENSORS, Checkpointer
from tunesmith.train.loop import LocalAccelerator, LoopSettings, train

N = 40


class Killed(Exception):
    """Stands for the process dying: nothing after it runs."""


class KillAt(Callback):
    order = 99

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state: TrainState, loss: float) -> None:
        if state.step == self.step:
            raise Killed


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(4, 16)
        self.drop = torch.nn.Dropout(0.3)
        self.out = torch.nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(torch.relu(self.hidden(x))))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, 4, generator=gen)
    return x, (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()


def _fit(folder: Path | None, *, resume: bool = False, kill: int | None = None, accum: int = 1) -> tuple[Net, Any]:
    x, y = _data()
    torch.manual_seed(0)
    net = Net()

    def collate(items: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(items)
        return {"x": x[idx], "target": y[idx], "index": idx}

    callbacks: list[Callback] = [
        EarlyStopping(
            "accuracy",
            "max",
            patience=50,
            state_fn=lambda: {k: v.clone() for k, v in net.state_dict().items()},
            load_fn=net.load_state_dict,
        ),
        WeightAverage(0.9),
    ]
    if kill is not None:
        callbacks.append(KillAt(kill))
    checkpointer = Checkpointer(folder, every_steps=3, resume=resume) if folder is not None else None
    torch.manual_seed(0)  # dropout's generator; a resumed fit takes the checkpoint's
    state = train(
        net, train_set=list(range(N)), train_lengths=np.ones(N, dtype=np.int64), valid_set=list(range(N)),
        valid_lengths=np.ones(N, dtype=np.int64), valid_targets=y.numpy(), collate=collate,
        loss_fn=torch.nn.CrossEntropyLoss(), optimizer=torch.optim.AdamW(net.parameters(), lr=0.05),
        make_scheduler=lambda opt, total: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=total),
        settings=LoopSettings(epochs=4, batch_size=6, eval_batch_size=16, grad_accum_steps=accum, seed=3),
        accelerator=LocalAccelerator(), valid_metrics=lambda t, o: {"accuracy": float((o.argmax(1) == t).mean())},
        callbacks=callbacks, checkpointer=checkpointer,
    )  # fmt: skip
    return net, state


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("kill", [1, 3, 7, 8, 14, 20])
def test_a_fit_killed_at_any_step_resumes_to_the_same_weights(tmp_path: Path, kill: int) -> None:
    plain, plain_state = _fit(None)
    with pytest.raises(Killed):
        _fit(tmp_path, kill=kill)
    resumed, state = _fit(tmp_path, resume=True)
    assert _same(plain, resumed)
    assert [h["train_loss"] for h in state.history] == [h["train_loss"] for h in plain_state.history]
    assert state.best_epoch == plain_state.best_epoch and state.step == plain_state.step == 4 * 7
    # Killed before the first checkpoint was written (after step 3) it started over.
    assert ("resumed_from" in state.extra) is (kill > 3)


def test_gradient_accumulation_checkpoints_only_between_updates(tmp_path: Path) -> None:
    plain, _ = _fit(None, accum=2)
    with pytest.raises(Killed):
        _fit(tmp_path, kill=10, accum=2)
    metas = [json.loads((tmp_path / n / META).read_text()) for n in Checkpointer(tmp_path).names()]
    # Saved after an update, never inside a group, at the first update 3 or more batches after the
    # last save (7 batches an epoch: updates after batches 2, 4, 6 and 7 of each).
    assert [(m["step"], m["epoch"], m["batch"]) for m in metas] == [(7, 1, 0), (4, 0, 4)]
    resumed, _ = _fit(tmp_path, resume=True, accum=2)
    assert _same(plain, resumed)


def test_a_damaged_newest_checkpoint_is_skipped_for_the_one_before(tmp_path: Path) -> None:
    plain, _ = _fit(None)
    with pytest.raises(Killed):
        _fit(tmp_path, kill=13)
    names = Checkpointer(tmp_path).names()
    assert names == ["step-000000010", "step-000000007"]  # the newest two are kept
    newest = tmp_path / names[0] / TENSORS
    data = bytearray(newest.read_bytes())
    data[-5] ^= 0xFF
    newest.write_bytes(bytes(data))
    # A write cut short leaves a hidden temporary folder, which is never read.
    (tmp_path / ".step-000000015.tmp-x").mkdir()
    checkpointer = Checkpointer(tmp_path, resume=True)
    found = checkpointer.latest()
    assert found is not None and found.folder.name == "step-000000007"
    assert "does not match the SHA-256" in checkpointer.skipped[0]["reason"]
    resumed, _ = _fit(tmp_path, resume=True)
    assert _same(plain, resumed)


def test_checkpoints_pass_the_model_folder_trust_checks(tmp_path: Path) -> None:
    with pytest.raises(Killed):
        _fit(tmp_path, kill=4)
    (only,) = Checkpointer(tmp_path).names()
    folder = tmp_path / only
    (folder / "extra.pkl").write_bytes(b"\x80\x04K\x01.")  # a pickle planted in the checkpoint
    checkpointer = Checkpointer(tmp_path, resume=True)
    assert checkpointer.latest() is None
    assert "pickle" in checkpointer.skipped[0]["reason"]
    (folder / "extra.pkl").unlink()
    (folder / "link").symlink_to("/etc/passwd")
    checkpointer = Checkpointer(tmp_path, resume=True)
    assert checkpointer.latest() is None and "link" in checkpointer.skipped[0]["reason"]


def test_a_checkpoint_of_other_data_or_shapes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Killed):
        _fit(tmp_path, kill=4)
    other = Checkpointer(tmp_path, resume=True, fingerprint="something-else")
    assert other.latest() is None and "fingerprint differs" in other.skipped[0]["reason"]
    wrong = Checkpointer(tmp_path, resume=True)
    assert wrong.latest(expected={"hidden.weight": (2, 2)}) is None
    assert "other names or shapes" in wrong.skipped[0]["reason"]
    with pytest.raises(ArtifactError):
        Checkpointer(tmp_path)._load(tmp_path / "missing", None)
