"""Tokenizer: robust standardisation, masking of missing values, refusal of bad columns."""

from __future__ import annotations

import logging

import numpy as np
import polars as pl
import pytest
import torch

from galaxy_assets.emulator import EmulatorConfigError, EmulatorDataError, Tokenizer
from galaxy_assets.emulator.model import PropertyEmulator, new_config


def _frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "a": [1.0, 2.0, 3.0, 4.0, 100.0],
            "b": [10.0, None, 30.0, float("nan"), 50.0],
            "c": [0.0, 1.0, 0.0, 2.0, 5.0],
        }
    )


def test_fit_uses_median_and_mad_of_the_rows():
    tok = Tokenizer.fit(_frame(), ["a", "b", "c"])
    assert tok.columns == ("a", "b", "c")
    assert tok.medians[0] == 3.0
    assert tok.scales[0] == pytest.approx(1.4826 * 1.0)  # |a - 3| = 2,1,0,1,97 → MAD 1
    assert tok.medians[1] == 30.0  # nulls and NaNs ignored
    assert tok.scales[1] == pytest.approx(1.4826 * 20.0)
    z = tok.standardize(np.array([[3.0, 30.0, 1.0]]))
    assert z[0, 0] == 0.0 and z[0, 1] == 0.0


def test_mad_zero_falls_back_to_std(caplog):
    frame = pl.DataFrame({"v": [1.0, 1.0, 1.0, 1.0, 5.0]})
    with caplog.at_level(logging.WARNING):
        tok = Tokenizer.fit(frame, ["v"])
    assert tok.scales[0] == pytest.approx(np.std([1, 1, 1, 1, 5]))
    assert "MAD 0" in caplog.text


def test_missing_values_become_masked_padding():
    tok = Tokenizer.fit(_frame(), ["a", "b", "c"])
    frame = pl.DataFrame({"a": [3.0, None], "b": [float("nan"), 30.0], "extra": [1.0, 2.0]})
    batch = tok.encode(frame)  # column c is absent, 'extra' is not in the vocabulary
    assert batch.known.tolist() == [[True, False, False], [False, True, False]]
    assert batch.values.dtype == torch.float32
    assert batch.values[~batch.known].abs().sum() == 0  # padding carries no value


def test_use_and_drop_restrict_known_values():
    tok = Tokenizer.fit(_frame(), ["a", "b", "c"])
    frame = pl.DataFrame({"a": [1.0], "b": [20.0], "c": [2.0]})
    assert tok.encode(frame, use=["a", "c"]).known.tolist() == [[True, False, True]]
    batch = tok.encode(frame, drop=["b"])
    assert batch.known.tolist() == [[True, False, True]] and batch.values[0, 1] == 0
    with pytest.raises(EmulatorConfigError, match="not in the model's vocabulary"):
        tok.encode(frame, use=["nope"])


def test_padding_is_masked_out_of_attention():
    """Whatever sits in a padded slot never changes the model's output."""
    tok = Tokenizer.fit(_frame(), ["a", "b", "c"])
    model = PropertyEmulator(new_config(tok, ["c"], d_model=16, n_heads=2, d_ff=32)).eval()
    values = torch.tensor([[0.5, 0.0, 0.0], [0.1, -0.3, 0.0]])
    known = torch.tensor([[True, False, False], [True, True, False]])
    target = torch.tensor([2, 2])
    base = model.condition(values, known, target)
    garbage = values.clone()
    garbage[~known] = torch.tensor([123.0, -9.0, 77.0, 5.0][: int((~known).sum())])
    assert torch.equal(model.condition(garbage, known, target), base)
    # … while a known value does change it
    changed = values.clone()
    changed[1, 1] = 2.0
    assert not torch.allclose(model.condition(changed, known, target)[1], base[1])


@pytest.mark.parametrize(
    ("column", "values", "match"),
    [
        ("empty", [None, None, None], "every value is missing"),
        ("const", [2.0, 2.0, None], "constant"),
        ("inf", [1.0, float("inf"), 2.0], "infinite"),
    ],
)
def test_bad_columns_are_refused(column, values, match):
    frame = pl.DataFrame({"ok": [1.0, 2.0, 3.0], column: values}, strict=False)
    with pytest.raises(EmulatorDataError, match=match) as info:
        Tokenizer.fit(frame, ["ok", column])
    assert column in str(info.value)


def test_every_bad_column_is_listed_at_once():
    frame = pl.DataFrame({"e": [None, None], "c": [1.0, 1.0], "s": ["x", "y"]}, strict=False)
    with pytest.raises(EmulatorDataError) as info:
        Tokenizer.fit(frame, ["e", "c", "s", "missing"])
    text = str(info.value)
    for name in ("e:", "c:", "s:", "missing: no such column"):
        assert name in text


def test_infinities_at_encode_raise_or_are_masked():
    tok = Tokenizer.fit(_frame(), ["a", "b", "c"])
    frame = pl.DataFrame({"a": [float("inf"), 1.0], "b": [1.0, 2.0]})
    with pytest.raises(EmulatorDataError, match="infinite values in a"):
        tok.encode(frame)
    batch = tok.encode(frame, on_infinite="mask")
    assert batch.known[:, 0].tolist() == [False, True]


def test_a_value_beyond_float32_is_unknown_as_in_training():
    """Training casts the standardized values to float32 and masks what overflows; encode
    did the cast after masking, so 1e39 became an infinite token (NaN posteriors)."""
    tok = Tokenizer.fit(_frame(), ["a", "b", "c"])
    batch = tok.encode(pl.DataFrame({"a": [1e39, 1.0], "b": [1.0, 2.0]}))
    assert batch.known[:, 0].tolist() == [False, True]
    assert torch.isfinite(batch.values).all()


def test_config_round_trip_is_exact():
    tok = Tokenizer.fit(_frame(), ["a", "b", "c"])
    again = Tokenizer.from_config(tok.to_config())
    assert again.columns == tok.columns
    np.testing.assert_array_equal(again.medians, tok.medians)
    np.testing.assert_array_equal(again.scales, tok.scales)
    with pytest.raises(EmulatorConfigError, match="lacks 'scales'"):
        Tokenizer.from_config({"columns": ["a"], "medians": [0.0]})
    with pytest.raises(EmulatorConfigError, match="repeat"):
        Tokenizer(["a", "a"], [0, 0], [1, 1])
