"""The model: no leak of a label into its own query, config round trips, registry save/load."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from galaxy_assets.emulator import (
    CODE_REF,
    EmulatorConfigError,
    Tokenizer,
    UnknownLabelError,
    build_from_config,
    load_emulator,
    log_emulator,
    sample_posterior,
)
from galaxy_assets.emulator.model import EmulatorConfig, PropertyEmulator, new_config
from galaxy_assets.emulator.train import training_batch


def _tiny(targets=("y",)) -> PropertyEmulator:
    frame = pl.DataFrame({"x": [0.0, 1.0, 2.0, 3.0], "z": [1.0, 0.0, 3.0, 2.0], "y": [1, 2, 4, 8]})
    tok = Tokenizer.fit(frame, ["x", "z", "y"])
    cfg = new_config(tok, list(targets), d_model=16, n_heads=2, d_ff=32, head_hidden=16)
    torch.manual_seed(0)
    return PropertyEmulator(cfg).eval()


# --------------------------------------------------------------------------- the leak
def test_condition_never_sees_the_target_value():
    """Even when the caller marks the target as known, its value cannot move the output."""
    model = _tiny()
    y = model.tokenizer.index("y")
    values = torch.tensor([[0.3, -0.2, 0.0]] * 3)
    values[:, y] = torch.tensor([-5.0, 0.0, 5.0])
    known = torch.ones(3, 3, dtype=torch.bool)
    target = torch.full((3,), y)
    cond = model.condition(values, known, target)
    torch.testing.assert_close(cond[0], cond[1], rtol=0, atol=0)
    torch.testing.assert_close(cond[0], cond[2], rtol=0, atol=0)
    # the same value is visible when another column is the target
    cond_x = model.condition(values, known, torch.zeros(3, dtype=torch.long))
    assert not torch.allclose(cond_x[0], cond_x[2])
    # and no gradient flows from the target's value into the condition
    v = values.clone().requires_grad_(True)
    weights = torch.randn(cond.shape[1], generator=torch.Generator().manual_seed(0))
    (model.condition(v, known, target) @ weights).sum().backward()
    assert torch.all(v.grad[:, y] == 0) and torch.any(v.grad[:, 0] != 0)


def test_training_tasks_never_put_the_target_among_the_inputs():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4000, 6))
    z[rng.random(z.shape) < 0.3] = np.nan
    targets = np.array([False, False, True, True, True, False])
    z[~np.isfinite(z[:, targets]).any(axis=1), 2] = 0.5  # every row has a target value
    for _ in range(5):
        values, known, target, x0 = training_batch(z, targets, rng)
        rows = np.arange(len(z))
        assert not known[rows, target].any()
        assert (values[rows, target] == 0).all()
        assert targets[target].all()
        np.testing.assert_array_equal(x0, z[rows, target].astype(np.float32))
        assert np.isfinite(z[rows, target]).all()
        # the inputs are a subset of the other known values, never padding
        assert not (known & ~np.isfinite(z)).any()
        assert (known.sum(axis=1) >= 1)[np.isfinite(z).sum(axis=1) >= 2].all()


def test_context_lengths_vary_and_sometimes_are_full():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(3000, 8))
    values, known, target, _ = training_batch(z, np.ones(8, bool), rng, full_context_fraction=0.25)
    lengths = known.sum(axis=1)
    assert set(np.unique(lengths)) == set(range(1, 8))
    assert 0.25 < np.mean(lengths == 7) < 0.4  # 25% forced full + 1/7 of the rest


def test_label_free_tasks_keep_other_labels_out_of_the_context():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(4000, 6))
    targets = np.array([False, False, False, True, True, True])
    _, known, target, _ = training_batch(z, targets, rng, label_free_fraction=1.0,
                                         full_context_fraction=1.0)
    assert not known[:, targets].any()  # no label in any context
    assert known[:, ~targets].all()  # full context: every input
    _, known, _, _ = training_batch(z, targets, rng, label_free_fraction=0.5,
                                    full_context_fraction=1.0)
    with_labels = known[:, targets].any(axis=1)
    assert 0.4 < with_labels.mean() < 0.6  # half the rows see the other labels


def test_posterior_ignores_the_label_column_of_the_frame(gaussian_model):
    """Asking for y with y in the frame (any value, or none) gives the same draws."""
    model = gaussian_model.model
    base = gaussian_model.table.frame.head(20).select("object_id", "x")
    draws = []
    for y in (None, -100.0, 100.0):
        frame = base if y is None else base.with_columns(pl.lit(y).alias("y"))
        draws.append(sample_posterior(model, frame, "y", n_samples=50, seed=3).samples)
    np.testing.assert_array_equal(draws[0], draws[1])
    np.testing.assert_array_equal(draws[0], draws[2])


# --------------------------------------------------------------------------- config
def test_unknown_or_input_only_labels_are_refused():
    model = _tiny(targets=("y",))
    frame = pl.DataFrame({"object_id": ["a"], "x": [1.0]})
    with pytest.raises(UnknownLabelError, match="never saw a column 'redshift'"):
        sample_posterior(model, frame, "redshift")
    with pytest.raises(UnknownLabelError, match="only an input"):
        sample_posterior(model, frame, "x")
    with pytest.raises(EmulatorConfigError, match="not columns the emulator knows"):
        sample_posterior(model, frame, "y", inputs=["x", "colour_q"])


def test_config_round_trip_and_validation():
    model = _tiny()
    cfg = model.config_dict()
    assert cfg["tokenizer"]["medians"] == [float(v) for v in model.tokenizer.medians]
    again = build_from_config(cfg)
    again.load_state_dict(model.state_dict(), strict=True)
    with pytest.raises(EmulatorConfigError, match="unknown keys"):
        build_from_config({**cfg, "colour": 1})
    with pytest.raises(EmulatorConfigError, match="not divisible"):
        EmulatorConfig(tokenizer=cfg["tokenizer"], targets=["y"], d_model=10, n_heads=3)
    with pytest.raises(EmulatorConfigError, match="are not columns"):
        EmulatorConfig(tokenizer=cfg["tokenizer"], targets=["q"])
    with pytest.raises(EmulatorConfigError, match="unknown diffusion schedule"):
        EmulatorConfig(tokenizer=cfg["tokenizer"], targets=["y"], schedule="square")
    with pytest.raises(EmulatorConfigError, match="unknown sampler settings"):
        model.sampler_settings(temperature=2)


def test_save_and_load_through_mlflow_give_identical_samples(gaussian_model, tracker):
    model = gaussian_model.model
    frame = gaussian_model.table.frame.head(25).select("object_id", "x")
    with tracker.start_run("property-emulator", run_name="test") as run:
        path = log_emulator(run, model)
    version = tracker.register(run.run_id, path, "property-emulator")
    tracker.set_alias("property-emulator", "champion", version)
    loaded, got = load_emulator(tracker, "champion")
    assert got == version and isinstance(loaded, PropertyEmulator)
    assert loaded.tokenizer.to_config() == model.tokenizer.to_config()
    a = sample_posterior(model, frame, "y", n_samples=200, seed=11)
    b = sample_posterior(loaded, frame, "y", n_samples=200, seed=11)
    np.testing.assert_array_equal(a.samples, b.samples)
    c = sample_posterior(loaded, frame, "y", n_samples=200, seed=12)
    assert not np.array_equal(a.samples, c.samples)
    meta = (tracker.artifact_root / "property-emulator").rglob("model.json")
    assert any(CODE_REF in p.read_text() for p in meta)
