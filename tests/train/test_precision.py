"""Mixed precision and attention kernels: what each setting resolves to, and that the loop applies it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tunesmith import FineTuner
from tunesmith.errors import ConfigError
from tunesmith.train import precision
from tunesmith.train.loop import LocalAccelerator, LoopSettings, train
from tunesmith.train.precision import accelerate_precision, attention_kernel, autocast_dtype, cpu_has_bf16


def test_each_setting_resolves_to_a_dtype_on_the_cpu() -> None:
    assert autocast_dtype("no", "cpu") is None
    assert autocast_dtype("bf16", "cpu") is torch.bfloat16
    assert autocast_dtype("auto", "cpu") is (torch.bfloat16 if cpu_has_bf16() else None)
    with pytest.raises(ConfigError, match="mixed_precision='fp16' needs a CUDA device; this fit runs on cpu"):
        autocast_dtype("fp16", "cpu")
    with pytest.raises(ConfigError, match="unknown mixed_precision 'fp8'"):
        autocast_dtype("fp8", "cpu")
    # Accelerate is only told about fp16 (it needs its loss scaler); bf16 stays with the loop.
    assert [accelerate_precision(p) for p in ("auto", "no", "bf16", "fp16")] == ["no", "no", "no", "fp16"]
    # Plain attention only where it was measured faster: CPUs in bfloat16.
    assert attention_kernel("auto", "cpu", torch.bfloat16) == "eager"
    assert attention_kernel("auto", "cpu", None) == "sdpa"
    assert attention_kernel("auto", "cuda", torch.bfloat16) == "sdpa"
    assert attention_kernel("sdpa", "cpu", torch.bfloat16) == "sdpa"
    assert attention_kernel("eager", "cpu", None) == "eager"


def test_auto_follows_the_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert autocast_dtype("auto", "cpu") is None
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert autocast_dtype("auto", "cpu") is torch.bfloat16


def test_the_loop_autocasts_training_and_validation_passes() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 3)
    y = (x[:, 0] > 0).long()
    seen: list[tuple[bool, torch.dtype]] = []

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.linear(x)
            seen.append((self.training, out.dtype))
            return out

    def collate(items: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(items)
        return {"x": x[idx], "target": y[idx], "index": idx}

    net = Net()
    state = train(
        net, train_set=list(range(16)), train_lengths=np.ones(16, dtype=np.int64), valid_set=list(range(16)),
        valid_lengths=np.ones(16, dtype=np.int64), valid_targets=y.numpy(), collate=collate,
        loss_fn=torch.nn.CrossEntropyLoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        make_scheduler=lambda opt, total: torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0),
        settings=LoopSettings(epochs=1, batch_size=8, eval_batch_size=16, length_bucketing=False,
                              autocast_dtype=torch.bfloat16),
        accelerator=LocalAccelerator(), valid_metrics=lambda t, o: {"accuracy": float((o.argmax(1) == t).mean())},
    )  # fmt: skip
    assert {dtype for _, dtype in seen} == {torch.bfloat16}
    assert {training for training, _ in seen} == {True, False}  # both passes were autocast
    # The weights stay float32: only the products ran in bfloat16.
    assert net.linear.weight.dtype is torch.float32 and np.isfinite(state.history[0]["train_loss"])


def test_fits_in_one_process_may_use_different_precisions(reviews: pd.DataFrame, fast_params: dict) -> None:
    bf16 = FineTuner(**{**fast_params, "mixed_precision": "bf16", "epochs": 1}).fit(reviews, target="label")
    fp32 = FineTuner(**{**fast_params, "mixed_precision": "no", "epochs": 1}).fit(reviews, target="label")
    for ft in (bf16, fp32):
        assert np.isfinite(ft.history_[0]["train_loss"]) and len(ft.predict(reviews.head(3))) == 3
    # On a CPU in bfloat16 the encoder trains with plain attention (faster there than the fused kernel).
    assert bf16.training_info_["compute"] == {"precision": "bfloat16", "attention": "eager"}
    assert fp32.training_info_["compute"] == {"precision": "float32", "attention": "sdpa"}
    assert bf16.model_.backbone.base_model().embeddings.word_embeddings.weight.dtype is torch.float32


def test_fp16_on_a_cpu_is_refused_before_it_can_lock_the_process(reviews: pd.DataFrame, fast_params: dict) -> None:
    with pytest.raises(ConfigError, match="mixed_precision='fp16' needs a CUDA device"):
        FineTuner(**{**fast_params, "mixed_precision": "fp16", "epochs": 1}).fit(reviews, target="label")
    # Accelerate was never told fp16, so a later fit in this process still works.
    ft = FineTuner(**{**fast_params, "epochs": 1}).fit(reviews, target="label")
    assert len(ft.history_) == 1
