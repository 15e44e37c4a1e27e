"""The monitor works over every kind of model through the estimator contract."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tests.estimators.test_contract import CASES, _log, _ratings, _reviews, _stripes, _table, fitted  # noqa: F401
from tunesmith.monitor import monitor


def _frames(kind: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Reference (labeled), a current set like it, and a shifted current set."""
    if kind == "text":
        ref, same = _reviews(200, seed=1), _reviews(200, seed=2).drop(columns=["label"])
        odd = pd.DataFrame({"text": [f"quarterly revenue guidance {i} beat consensus" for i in range(200)]})
        return ref, same, odd
    if kind == "image":
        x, y = _stripes(240, seed=1)
        ref = pd.DataFrame({"image": list(x[:120]), "label": y[:120]})
        same = pd.DataFrame({"image": list(x[120:])})
        noisy = pd.DataFrame(
            {"image": list(np.clip(x[120:] + np.random.default_rng(0).normal(0, 0.5, x[120:].shape), 0, 1))}
        )
        return ref, same, noisy
    if kind == "tabular":
        ref, same = _table(400, seed=1), _table(300, seed=2).drop(columns=["label"])
        moved = same.assign(x1=same["x1"] * 1000)
        return ref, same, moved
    if kind == "recommender":
        log = _log(seed=1)
        new_users = log.assign(user_id="new-" + log["user_id"])
        return log.head(200), log.tail(160), new_users.tail(160)
    ratings = _ratings(seed=1)
    return (
        ratings,
        _ratings(seed=2).drop(columns=["label"]),
        _ratings(seed=3).drop(columns=["label"]).assign(text="an entirely unrelated sentence about tax law"),
    )


def test_every_kind_is_monitored(fitted: tuple[Any, Any, Any, Any]) -> None:  # noqa: F811
    case, est, _, _ = fitted
    ref, same, moved = _frames(case.kind)
    target = None if case.kind == "recommender" else "label"
    kw = {
        "target": target,
        "window_rows": len(same),
        "min_window_rows": 50,
        "progress_bar": False,
        "embedding_rows": 60,
    }
    calm = monitor(est, ref, same, **kw)
    shifted = monitor(est, ref, moved, **kw)
    names = {s["name"] for s in calm.result["signals"]}
    assert any(n.startswith("input:") for n in names)
    if case.classifier:
        assert "output:probabilities" in names
        assert "performance:estimated accuracy" in names
    if case.kind in ("text", "image", "personalized"):
        assert "representation:embedding" in names
    assert shifted.result["windows"][0]["drift"], shifted.result["windows"][0]["values"]
    drifted = sum(v["drift"] for v in calm.result["windows"][0]["values"].values())
    assert drifted <= 1


def test_a_recommender_log_and_later_interactions_are_monitored(tmp_path: Any) -> None:
    from tunesmith import Recommender
    from tunesmith.serve.predlog import LogRecord, PredictionLog

    log = _log(seed=0)
    rec = Recommender(model="ease", min_rating=5, runs_dir="").fit(log, target="rating")
    later = _log(seed=1)  # the same users a little later: their new interactions are the labels
    res = monitor(rec, later.head(180), later.tail(180), window_rows=180, min_window_rows=50, progress_bar=False)
    names = {s["name"] for s in res.result["signals"]}
    assert {"input:user.known", "input:item.popularity", "output:recommended popularity"} <= names
    assert "performance:realized ndcg@10" in names
    assert res.result["reference"]["performance"]["metric"] == "ndcg@10"

    path = tmp_path / "recs.sqlite"
    plog = PredictionLog(path)
    plog.start()
    users = [f"u{i % 60}" for i in range(120)] + [f"stranger{i}" for i in range(60)]
    lists = rec.predict([u for u in users if not u.startswith("stranger")], k=10).tolist() + [[]] * 60
    for i, (u, items) in enumerate(zip(users, lists, strict=True)):
        out = {"items": [{"item": it, "score": 1.0} for it in items], "source": "model" if items else "popularity"}
        plog.write(LogRecord(1e9 + i, f"r{i}", "v", "torch", 200, 2.0, [{"user": u, "k": 10}], [out]))
    plog.close()
    res = monitor(rec, later, path, window_rows=180, min_window_rows=50, progress_bar=False, model_version="v")
    values = res.result["windows"][0]["values"]
    assert values["input:user.known"]["drift"]  # a third of the requests come from unknown users
    assert res.result["current"]["prediction_log"]


def test_an_image_models_prediction_log_of_base64_images_is_monitored(tmp_path: Any) -> None:
    import base64
    import io

    from PIL import Image

    from tunesmith import ImageFineTuner
    from tunesmith.serve.predlog import LogRecord, PredictionLog

    x, y = _stripes(200, seed=2)
    pixels = (x * 255).astype(np.uint8)
    model = ImageFineTuner(backbone="tiny-image", image_size=16, epochs=1, progress=False, runs_dir="")
    model.fit(pixels[:120], y[:120])
    proba = model.predict_proba(pixels[120:])
    classes = [str(c) for c in model.classes_]
    log = PredictionLog(tmp_path / "images.sqlite")
    log.start()
    for i, (img, p) in enumerate(zip(pixels[120:], proba, strict=True)):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        row = (
            {"image": base64.b64encode(buf.getvalue()).decode()} if i % 2 else base64.b64encode(buf.getvalue()).decode()
        )
        out = {"label": classes[int(np.argmax(p))], "probabilities": dict(zip(classes, map(float, p), strict=True))}
        log.write(LogRecord(1e9 + i, f"r{i}", "v1", "onnx", 200, 1.0, [row], [out]))
    log.close()
    ref = pd.DataFrame({"image": list(pixels[:120]), "label": y[:120]})
    res = monitor(
        model,
        ref,
        tmp_path / "images.sqlite",
        model_version="v1",
        window_rows=80,
        min_window_rows=40,
        embedding_rows=40,
        progress_bar=False,
    )
    values = res.result["windows"][0]["values"]
    assert values["input:image.brightness"]["value"] is not None
    assert values["input:image.height"]["value"] == 0.0  # same size as the reference
    assert "representation:embedding" in values and "output:probabilities" in values
    assert res.result["current"]["rows"] == 80
