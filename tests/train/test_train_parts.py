import numpy as np
import pytest
import torch

from tunesmith.adapt import GradualUnfreezer, add_lora, apply_freezing, count_parameters, param_groups
from tunesmith.backbones import create_backbone
from tunesmith.errors import ConfigError
from tunesmith.model import TextModel
from tunesmith.train.batching import Collator, LengthGroupedBatchSampler
from tunesmith.train.callbacks import Callback, EarlyStopping, ProgressBar, StopTraining, TrainState
from tunesmith.train.loop import LocalAccelerator, LoopSettings, train
from tunesmith.train.losses import FocalLoss, class_weights, make_loss
from tunesmith.train.optim import lr_lambda, make_optimizer


def test_tiny_backbone_contract():
    bb = create_backbone("tiny-text")
    ids = bb.tokenize(["Great movie!", "bad"], 16)
    assert ids[0][0] == bb.tokenizer.cls_token_id and len(ids[1]) == 3
    batch = Collator(bb.pad_id)([{"input_ids": i, "index": k} for k, i in enumerate(ids)])
    out = bb(batch["input_ids"], batch["attention_mask"])
    assert out.shape == (2, bb.hidden_size)
    assert len(bb.layer_groups()) == 1 + bb.num_layers == 3
    # the same seed builds the same weights
    again = create_backbone("tiny-text")
    assert bb.fingerprint == again.fingerprint
    assert torch.equal(bb.model.embeddings.word_embeddings.weight, again.model.embeddings.word_embeddings.weight)


def test_mean_pooling_ignores_padding():
    bb = create_backbone("tiny-text").eval()
    ids = bb.tokenize(["good film"], 16)[0]
    alone = Collator(bb.pad_id)([{"input_ids": ids, "index": 0}])
    padded = Collator(bb.pad_id)([{"input_ids": ids, "index": 0}, {"input_ids": ids + [5] * 6, "index": 1}])
    a = bb(alone["input_ids"], alone["attention_mask"])
    b = bb(padded["input_ids"], padded["attention_mask"])[:1]
    assert torch.allclose(a, b, atol=1e-5)


def test_unknown_backbone_error_suggests():
    with pytest.raises(ConfigError, match="unknown backbone 'tiny-txt'.*Did you mean 'tiny-text'"):
        create_backbone("tiny-txt")


def test_freezing_prefix_and_head_only():
    bb = create_backbone("tiny-text")
    model = TextModel(bb, 2, 0.1)
    prefix = apply_freezing(bb, strategy="full", freeze_embeddings=False, freeze_layers=1)
    assert prefix == 2
    groups = bb.layer_groups()
    assert not any(p.requires_grad for g in groups[:2] for p in g.parameters())
    assert all(p.requires_grad for p in groups[2].parameters())
    apply_freezing(bb, strategy="head_only", freeze_embeddings=False, freeze_layers=0)
    trainable, total = count_parameters(model)
    assert trainable == sum(p.numel() for p in model.head.parameters()) < total
    with pytest.raises(ConfigError, match="freeze_layers"):
        apply_freezing(bb, strategy="full", freeze_embeddings=False, freeze_layers=5)


def test_gradual_unfreezing_goes_top_down():
    bb = create_backbone("tiny-text")
    unf = GradualUnfreezer(bb, frozen_prefix=0)
    groups = bb.layer_groups()
    unf.apply(0)
    assert not any(p.requires_grad for g in groups for p in g.parameters())
    unf.apply(1)
    assert all(p.requires_grad for p in groups[-1].parameters())
    assert not any(p.requires_grad for p in groups[-2].parameters())
    unf.apply(5)
    assert all(p.requires_grad for g in groups for p in g.parameters())


def test_layerwise_lr_decay_and_no_decay_groups():
    bb = create_backbone("tiny-text")
    model = TextModel(bb, 2, 0.1)
    groups = param_groups(bb, model.head, lr=1.0, head_lr=2.0, weight_decay=0.1, layer_lr_decay=0.5)
    by_name = {g["name"]: g for g in groups}
    assert by_name["head"]["lr"] == 2.0
    assert by_name["layer_1"]["lr"] == 1.0 and by_name["layer_0"]["lr"] == 0.5
    assert by_name["embeddings"]["lr"] == 0.25
    assert by_name["layer_1/no_decay"]["weight_decay"] == 0.0
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == len(list(model.parameters()))


def test_lora_trains_only_adapters():
    bb = create_backbone("tiny-text")
    add_lora(bb, r=4, alpha=8, dropout=0.0, targets=None)
    trainable = [n for n, p in bb.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with pytest.raises(ConfigError, match="no module named 'qkv'"):
        add_lora(create_backbone("tiny-text"), r=4, alpha=8, dropout=0.0, targets=["qkv"])


def test_losses():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    target = torch.tensor([0, 1])
    ce = make_loss("auto", "binary")(logits, target)
    focal = FocalLoss(gamma=2.0)(logits, target)
    assert focal < ce  # easy examples are down-weighted
    assert torch.isclose(FocalLoss(gamma=0.0)(logits, target), ce)
    with pytest.raises(ConfigError, match="regression loss"):
        make_loss("mse", "binary")
    w = class_weights("balanced", np.array([0, 0, 0, 1]), ["a", "b"])
    assert w is not None and torch.allclose(w, torch.tensor([4 / 6, 2.0]))
    with pytest.raises(ConfigError, match="label 'c'"):
        class_weights({"c": 2.0}, np.array([0, 1]), ["a", "b"])


def test_schedules():
    f = lr_lambda("linear", total_steps=10, warmup_steps=2)
    assert f(0) == 0.5 and f(1) == 1.0 and f(2) == 1.0 and f(10) == 0.0
    c = lr_lambda("cosine", total_steps=10, warmup_steps=0)
    assert c(0) == 1.0 and abs(c(5) - 0.5) < 1e-9
    assert lr_lambda("constant", 10, 0)(9) == 1.0
    opt = make_optimizer("sgd", [{"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=0.1, momentum=0.9)
    assert isinstance(opt, torch.optim.SGD)


def test_length_grouped_batches_reduce_padding_and_are_reproducible():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 120, size=640)
    s = LengthGroupedBatchSampler(lengths, 32, seed=1)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(640))
    assert batches == list(LengthGroupedBatchSampler(lengths, 32, seed=1))
    s.set_epoch(1)
    assert list(s) != batches

    def padding(bs):
        return sum(len(b) * lengths[b].max() - lengths[b].sum() for b in bs)

    random_batches = [list(range(i, i + 32)) for i in range(0, 640, 32)]
    assert padding(batches) < 0.2 * padding(random_batches)


def test_early_stopping_restores_best():
    weights = {"w": torch.tensor([0.0])}
    es = EarlyStopping("loss", "min", patience=2, state_fn=lambda: weights, load_fn=lambda s: weights.update(s))
    state = TrainState(model=torch.nn.Linear(1, 1), epochs=10, steps_per_epoch=1)
    for epoch, (loss, w) in enumerate([(1.0, 1.0), (0.5, 2.0), (0.6, 3.0)]):
        state.epoch = epoch
        weights["w"] = torch.tensor([w])
        es.on_epoch_end(state, {"valid_loss": loss})
    state.epoch = 3
    weights["w"] = torch.tensor([4.0])
    with pytest.raises(StopTraining, match="did not improve for 2"):
        es.on_epoch_end(state, {"valid_loss": 0.7})
    es.on_fit_end(state)
    assert weights["w"].item() == 2.0 and state.best_epoch == 2


def test_progress_bar_prints_a_plain_line_per_epoch_in_a_log(monkeypatch, capsys):
    monkeypatch.setenv("TUNESMITH_PROGRESS", "plain")
    bar = ProgressBar("fitting")
    state = TrainState(model=torch.nn.Linear(1, 1), epochs=2, steps_per_epoch=3)
    bar.on_fit_start(state)
    for epoch in range(2):
        state.epoch = epoch
        for _ in range(3):
            state.step += 1
            bar.on_step_end(state, 0.5)
        bar.on_epoch_end(state, {"epoch": epoch + 1, "train_loss": 0.5, "valid_loss": 0.25, "lr": 1e-3})
    bar.on_fit_end(state)
    lines = capsys.readouterr().err.splitlines()
    assert "fitting: started, 0/6 steps (0%)" in lines[0]
    epochs = [line for line in lines if "epoch " in line]
    assert len(epochs) == 2 and "epoch 1/2: train_loss 0.5000, valid_loss 0.2500" in epochs[0]
    assert "6/6 steps" in epochs[1] and "lr" not in epochs[1]
    assert "fitting: done, 6 steps" in lines[-1]


class _Seen(Callback):
    order = 90

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_epoch_end(self, state: TrainState, metrics: dict) -> None:
        self.epochs.append(metrics["epoch"])


class _StopAt(Callback):
    order = 10

    def on_epoch_end(self, state: TrainState, metrics: dict) -> None:
        if metrics["epoch"] == 2:
            raise StopTraining("two is enough")


def test_loop_runs_on_one_local_device_and_later_callbacks_see_the_stopping_epoch():
    torch.manual_seed(0)
    x = torch.randn(20, 3)
    y = (x[:, 0] > 0).long()

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x)

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 20

        def __getitem__(self, i: int) -> int:
            return i

    def collate(items: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(items)
        return {"x": x[idx], "target": y[idx], "index": idx}

    net = Net()
    seen = _Seen()
    state = train(
        net, train_set=Rows(), train_lengths=np.ones(20, dtype=np.int64), valid_set=Rows(),
        valid_lengths=np.ones(20, dtype=np.int64), valid_targets=y.numpy(), collate=collate,
        loss_fn=torch.nn.CrossEntropyLoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        make_scheduler=lambda opt, total: torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0),
        settings=LoopSettings(epochs=5, batch_size=8, eval_batch_size=20, length_bucketing=False),
        accelerator=LocalAccelerator(), valid_metrics=lambda t, o: {"accuracy": float((o.argmax(1) == t).mean())},
        callbacks=[seen, _StopAt()],
    )  # fmt: skip
    assert state.stop_reason == "two is enough" and seen.epochs == [1, 2] and len(state.history) == 2
    assert {"train_loss", "valid_loss", "valid_accuracy"} <= set(state.history[-1]) and state.step == 6
