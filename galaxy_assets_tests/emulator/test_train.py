"""Training: calibration on a known Gaussian posterior, divergence, early stopping, the split,
registration behind the calibration gate."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from galaxy_assets.emulator import (
    EmulatorConfigError,
    EmulatorDataError,
    TrainConfig,
    TrainingDivergedError,
    evaluate_emulator,
    make_table,
    register_emulator,
    sample_posterior,
    train_emulator,
)
from galaxy_assets.emulator.model import PropertyEmulator
from galaxy_assets.emulator.train import split_held_out, split_rows
from galaxy_assets_tests.emulator.conftest import NOISE, TINY_MODEL, gaussian_frame


def test_known_gaussian_posterior_is_calibrated(gaussian_model):
    """y | x ~ N(x, 0.25): on 2,000 fresh rows the 68% intervals cover 68% ± 5 points."""
    test = make_table(gaussian_frame(2000, seed=42, prefix="t"), ["x"], ["y"])
    report, kept = evaluate_emulator(
        gaussian_model.model, test, n_samples=400, max_rows=None, keep_samples=True
    )
    diffusion = report.get("y", "diffusion")
    assert diffusion.n == 2000
    assert abs(diffusion.coverage_68 - 0.68) < 0.05
    assert abs(diffusion.coverage_95 - 0.95) < 0.05
    # the posteriors are centred on x with about the right width
    post = kept.samples[("all", "y")]
    x = test.frame["x"].to_numpy()
    assert np.median(np.abs(np.median(post.samples, axis=1) - x)) < 0.1
    width = (np.quantile(post.samples, 0.84, axis=1) - np.quantile(post.samples, 0.16, axis=1)) / 2
    assert abs(np.median(width) - NOISE) < 0.1
    gaussian = report.get("y", "gaussian")
    assert abs(gaussian.coverage_68 - 0.68) < 0.05


def test_training_history_and_early_stopping(gaussian_model):
    res = gaussian_model.result
    assert len(res.history) == 30 and 1 <= res.best_epoch <= 30
    assert res.history[-1]["val_diffusion"] < res.history[0]["val_diffusion"]
    best = min(h["val_diffusion"] for h in res.history)
    assert res.metrics["val_diffusion_loss"] == best
    assert res.rows_per_second > 0 and res.train_rows_seen == 30 * len(res.train_ids)
    assert set(res.train_ids).isdisjoint(res.val_ids)


def test_patience_stops_training_and_keeps_the_best_epoch(monkeypatch):
    """Held-out losses 1.0, 0.5, 0.6, 0.7…: best epoch 2, stop after 3 more (patience 3),
    and the returned weights are those scored at epoch 2."""
    import galaxy_assets.emulator.train as train_module

    table = make_table(gaussian_frame(300, seed=3), ["x"], ["y"])
    scores = iter([1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1])
    snapshots = []

    def fake_score(model, *args, **kwargs):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"diffusion": next(scores), "gaussian": 0.0}

    monkeypatch.setattr(train_module, "_score", fake_score)
    res = train_emulator(table, TrainConfig(epochs=8, patience=3, seed=0, model=TINY_MODEL))
    assert res.best_epoch == 2 and len(res.history) == 5
    assert "no held-out improvement for 3 epochs" in res.stop_reason
    for key, value in res.model.state_dict().items():
        torch.testing.assert_close(value, snapshots[1][key], rtol=0, atol=0)


def test_time_budget_anneals_the_learning_rate_within_the_budget(monkeypatch):
    """Each epoch 'takes' 1 s on a fake clock: a 10 s budget fits 10 of the 1,000 epochs, and
    the cosine rate reaches zero at the 10th instead of stopping at full rate."""
    import galaxy_assets.emulator.train as train_module

    clock = {"t": 0.0}
    monkeypatch.setattr(train_module.time, "perf_counter", lambda: clock["t"])
    real_score = train_module._score

    def timed_score(*args, **kwargs):
        clock["t"] += 1.0
        return real_score(*args, **kwargs)

    monkeypatch.setattr(train_module, "_score", timed_score)
    table = make_table(gaussian_frame(200, seed=4), ["x"], ["y"])
    cfg = TrainConfig(epochs=1000, patience=1000, lr=1e-3, time_budget_s=10.0, seed=0,
                      model=TINY_MODEL)
    res = train_emulator(table, cfg)
    assert len(res.history) == 10
    assert "annealed" in res.stop_reason
    lrs = [h["lr"] for h in res.history]
    assert lrs[0] > 0.9e-3 and lrs[-1] < 1e-9  # full rate first, zero at the end
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_nan_loss_stops_training_with_a_clear_error(monkeypatch):
    table = make_table(gaussian_frame(200, seed=4), ["x"], ["y"])
    calls = {"n": 0}
    real = PropertyEmulator.losses

    def poisoned(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] >= 3:
            out["diffusion"] = out["diffusion"] * float("nan")
        return out

    monkeypatch.setattr(PropertyEmulator, "losses", poisoned)
    with pytest.raises(TrainingDivergedError, match="diverged: the training loss is nan") as info:
        train_emulator(table, TrainConfig(epochs=5, batch_size=32, model=TINY_MODEL))
    assert "nothing was returned or registered" in str(info.value)


def test_exploding_learning_rate_diverges():
    """No monkeypatching: a learning rate of 1e9 drives the weights to inf/NaN."""
    table = make_table(gaussian_frame(200, seed=5), ["x"], ["y"])
    cfg = TrainConfig(
        epochs=20, batch_size=32, lr=1e9, grad_clip=1e30, weight_decay=0.0, model=TINY_MODEL
    )
    with pytest.raises(TrainingDivergedError):
        train_emulator(table, cfg)


def test_split_is_a_stable_function_of_the_id():
    ids = [f"obj-{i}" for i in range(2000)]
    mask = split_rows(ids, 0.2)
    assert 0.15 < mask.mean() < 0.25
    more = split_rows(ids + [f"new-{i}" for i in range(500)], 0.2)
    np.testing.assert_array_equal(more[:2000], mask)


def test_held_out_rows_are_halved_by_a_stable_hash_into_stopping_and_evaluation():
    """The held-out rows that choose the best weights are not the rows evaluated after
    training; a galaxy keeps its half when the table grows, and the halving does not follow
    the train/held-out hash."""
    ids = [f"obj-{i}" for i in range(4000)]
    half = split_held_out(ids)
    assert 0.45 < half.mean() < 0.55
    np.testing.assert_array_equal(split_held_out(ids + ["new-1", "new-2"])[:4000], half)
    val = split_rows(ids, 0.2)
    assert 0.4 < half[val].mean() < 0.6
    table = make_table(gaussian_frame(300, seed=12), ["x"], ["y"])
    res = train_emulator(table, TrainConfig(epochs=1, model=TINY_MODEL))
    assert len(res.stop_ids) and len(res.eval_ids)
    assert set(res.stop_ids).isdisjoint(res.eval_ids)
    assert not split_held_out(res.stop_ids).any() and split_held_out(res.eval_ids).all()
    assert res.metrics["n_val_early_stopping"] + res.metrics["n_val_evaluation"] == len(
        res.val_ids
    )


def test_rows_without_a_target_are_skipped_and_counted():
    frame = gaussian_frame(300, seed=6).with_columns(
        pl.when(pl.int_range(pl.len()) < 40).then(None).otherwise(pl.col("y")).alias("y")
    )
    table = make_table(frame, ["x"], ["y"])
    res = train_emulator(table, TrainConfig(epochs=1, model=TINY_MODEL))
    assert res.skipped["no_target"] == 40
    assert len(res.train_ids) + len(res.val_ids) == 260


def test_a_label_never_held_out_is_refused_before_training():
    """A label known only for galaxies of the training split could not be evaluated: the
    error comes before the run, not after it."""
    frame = gaussian_frame(400, seed=4)
    val = split_rows(frame["object_id"].to_numpy(), 0.2)
    b = np.full(400, np.nan)
    b[np.flatnonzero(~val)[:10]] = np.arange(10.0)
    table = make_table(frame.with_columns(pl.Series("b", b)), ["x"], ["y", "b"])
    with pytest.raises(EmulatorDataError, match="'b' is known for 10 galaxies, none of them in"):
        train_emulator(table, TrainConfig(epochs=1, val_fraction=0.2, model=TINY_MODEL))


def test_bad_training_settings():
    table = make_table(gaussian_frame(100, seed=7), ["x"], ["y"])
    with pytest.raises(EmulatorConfigError, match="targets"):
        train_emulator(table, TrainConfig(epochs=1, targets=["redshift"]))
    with pytest.raises(EmulatorConfigError, match="val_fraction"):
        TrainConfig(val_fraction=1.5)
    with pytest.raises(EmulatorConfigError, match="unknown model settings"):
        train_emulator(table, TrainConfig(epochs=1, model={"width": 3}))
    tiny = make_table(gaussian_frame(2, seed=8), ["x"], ["y"])
    with pytest.raises(EmulatorDataError, match="needs more rows"):
        train_emulator(tiny, TrainConfig(epochs=1))


def test_training_is_reproducible():
    table = make_table(gaussian_frame(200, seed=9), ["x"], ["y"])
    cfg = TrainConfig(epochs=2, seed=5, model=TINY_MODEL)
    a = train_emulator(table, cfg).model.state_dict()
    b = train_emulator(table, cfg).model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_register_moves_champion_only_when_calibrated(gaussian_model, tracker):
    res = gaussian_model.result
    test = make_table(gaussian_frame(600, seed=43, prefix="r"), ["x"], ["y"])
    report, _ = evaluate_emulator(res.model, test, n_samples=300)
    reg = register_emulator(tracker, res, report=report, tolerance=0.05)
    assert reg.version == 1
    assert reg.promoted, reg.reason
    assert int(tracker.get_alias_version("property-emulator", "champion").version) == 1
    metrics = tracker.run_metrics(reg.run_id)
    assert "all/y/diffusion/coverage_68" in metrics and "val_diffusion_loss" in metrics
    # an impossible tolerance and a worse-calibrated diffusion head: not promoted
    for m in report.metrics:
        if m.head == "diffusion":
            m.coverage_68, m.coverage_95 = 0.30, 0.60
    reg2 = register_emulator(tracker, res, report=report, tolerance=0.0)
    assert reg2.version == 2 and not reg2.promoted
    assert "not calibrated" in reg2.reason
    assert int(tracker.get_alias_version("property-emulator", "champion").version) == 1
    # without a report nothing moves
    assert not register_emulator(tracker, res).promoted


def test_samples_are_finite_and_respect_the_training_range(gaussian_model):
    frame = pl.DataFrame({"object_id": ["far"], "x": [1e6]})
    post = sample_posterior(gaussian_model.model, frame, "y", n_samples=100)
    assert np.isfinite(post.samples).all()
    tok = gaussian_model.model.tokenizer
    j = tok.index("y")
    span = tok.highs[j] - tok.lows[j]
    high = tok.to_physical(np.array([tok.highs[j] + 0.25 * span]), "y")[0]
    assert post.samples.max() <= high + 1e-3 * abs(high) + math.ulp(high)
