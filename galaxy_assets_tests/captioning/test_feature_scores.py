"""The describer's feature scores: loading, the design matrix and the arithmetic."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from galaxy_assets.captioning.feature_scores import (
    FeatureScorer,
    default_scorer,
    design_matrix,
    fit_standardisation,
)
from galaxy_assets.captioning.measure import Measurements
from galaxy_assets_tests.captioning.test_measure import RED, observe, sersic_plane

USED = {"arms", "lens", "edge_on", "merger", "bar", "ring"}  # the scores the describer reads
NETWORKS = {"arms", "merger", "bar", "ring"}  # scores from small networks
PROBABILITIES = {"merger"}  # logistic outputs; the others regress their visibility


def _measurements() -> Measurements:
    from galaxy_assets.captioning.measure import measure

    return measure(observe([sersic_plane(5.0, 4.0, 0.85)], [RED], seed=3), ("g", "r", "z"))


def test_shipped_scorer_covers_every_measurement_and_the_used_features():
    s = default_scorer()
    assert set(s.fields) == set(Measurements.field_names())
    assert USED <= set(s.features)
    assert len(s.sha) == 16 and s.sha == FeatureScorer.from_dict(s.as_dict()).sha


def test_standardisation_and_design_matrix_handle_missing_values():
    x = np.array([[1.0, np.nan, 5.0], [3.0, np.nan, 5.0], [5.0, np.nan, np.inf]])
    centre, scale = fit_standardisation(x)
    assert centre.tolist() == [3.0, 0.0, 5.0]  # an all-NaN column centres at 0
    assert scale[1] == 1.0 and scale[2] == 1.0  # undefined or zero spread -> 1
    z = design_matrix(x, centre, scale)
    assert z.shape == (3, 6) and np.isfinite(z).all()
    np.testing.assert_allclose(z[:, 0], np.arcsinh((x[:, 0] - 3.0) / scale[0]))
    assert z[:, 3:].tolist() == [[0, 1, 0], [0, 1, 0], [0, 1, 1]]  # missing indicators
    assert z[2, 2] == 0.0  # inf is missing: centred


def test_score_is_the_linear_model_written_out():
    s = default_scorer()
    m = _measurements()
    got = s.score(m)
    row = np.array([float(getattr(m, f)) for f in s.fields])
    finite = np.isfinite(row)
    z = np.arcsinh((np.where(finite, row, s.centre) - s.centre) / s.scale)
    feats = np.concatenate([z, (~finite).astype(float)])
    for name, w in s.weights.items():
        assert got[name] == pytest.approx(float(feats @ w[:-1] + w[-1]), abs=1e-9)
    assert NETWORKS <= set(s.networks)
    assert {k for k, v in s.network_outputs.items() if v == "logistic"} == PROBABILITIES
    for name, net in s.networks.items():
        hidden = np.maximum(feats @ net["W1"] + net["b1"], 0.0)
        y = float(hidden @ net["w2"]) + float(net["b2"][0])
        if name in PROBABILITIES:
            assert got[name] == pytest.approx(1.0 / (1.0 + math.exp(-y)), abs=1e-9)
            assert 0.0 <= got[name] <= 1.0
        else:  # a visibility regression: the network's output as it is
            assert s.network_outputs[name] == "identity"
            assert got[name] == pytest.approx(y, abs=1e-9)
    # the same numbers through the batch path
    batch = s.score_matrix(np.stack([row, row]))
    assert all(batch[k][1] == pytest.approx(v) for k, v in got.items())


def test_a_nan_measurement_scores_as_missing_not_as_nan():
    s = default_scorer()
    m = replace(_measurements(), spiral_snr=math.nan, arc_snr=math.nan)
    assert all(math.isfinite(v) for v in s.score(m).values())


def test_bad_scores_files_are_refused_with_the_fix():
    d = default_scorer().as_dict()
    with pytest.raises(ValueError, match="refit with benchmarks/fit_describer_scores.py"):
        FeatureScorer.from_dict({**d, "centre": d["centre"][:-1]})
    with pytest.raises(ValueError, match="wrong weight length"):
        FeatureScorer.from_dict({**d, "weights": {"lens": [0.0, 1.0]}})
    nets = {**d["networks"], "ring": {**d["networks"]["ring"], "w2": [0.0]}}
    with pytest.raises(ValueError, match="network 'ring'"):
        FeatureScorer.from_dict({**d, "networks": nets})
    with pytest.raises(ValueError, match="both a linear and a network"):
        FeatureScorer.from_dict({**d, "weights": {**d["weights"], "ring": d["weights"]["lens"]}})
    odd = {**d["networks"], "bar": {**d["networks"]["bar"], "output": "softmax"}}
    with pytest.raises(ValueError, match="'bar': 'softmax'"):
        FeatureScorer.from_dict({**d, "networks": odd})
    renamed = {**d, "fields": ["no_such_measurement", *d["fields"][1:]]}
    with pytest.raises(ValueError, match="no_such_measurement"):
        FeatureScorer.from_dict(renamed)


def test_a_network_without_an_output_is_a_probability():
    """Files written before version 4 name no output: their networks are classifiers."""
    d = default_scorer().as_dict()
    old = {k: {p: v for p, v in net.items() if p != "output"} for k, net in d["networks"].items()}
    s = FeatureScorer.from_dict({**d, "networks": old})
    assert set(s.network_outputs.values()) == {"logistic"}
    scores = s.score(_measurements())
    assert all(0.0 <= scores[k] <= 1.0 for k in NETWORKS)


def test_presence_is_a_probability_that_keeps_the_order_of_visibility_scores():
    s = default_scorer()
    assert set(s.residual_sd) == NETWORKS - PROBABILITIES
    assert all(0.0 < sd < 1.0 for sd in s.residual_sd.values())
    vis = [-0.2, 0.3, 0.5, 1.0, 1.2]  # a regression may stray outside [0, 1]
    p = [s.presence({"bar": v})["bar"] for v in vis]
    assert all(0.0 <= x <= 1.0 for x in p)
    assert all(a < b for a, b in zip(p, p[1:], strict=False))  # no ties where a clip would tie
    assert p[2] == pytest.approx(0.5)  # visibility 0.5: as likely there as not
    sd = s.residual_sd["bar"]
    assert p[3] == pytest.approx(0.5 * (1 + math.erf(0.5 / sd / math.sqrt(2))))
    got = s.presence({"merger": 0.3, "lens": 1.4, "edge_on": -0.1, "ring": math.nan})
    assert got == {"merger": 0.3, "lens": 1.0, "edge_on": 0.0}  # probabilities kept, linear clipped


def test_a_regression_network_needs_its_residual_spread():
    d = default_scorer().as_dict()
    bare = {
        **d["networks"],
        "bar": {k: v for k, v in d["networks"]["bar"].items() if k != "residual_sd"},
    }
    with pytest.raises(ValueError, match=r"\['bar'\] have no positive residual_sd"):
        FeatureScorer.from_dict({**d, "networks": bare})
