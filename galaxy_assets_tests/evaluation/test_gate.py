"""The champion gate on constructed cases: first champion, pass, fail, and its guards."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from galaxy_assets.evaluation.errors import EvaluationError
from galaxy_assets.evaluation.gate import (
    FIRST_CHAMPION,
    compare_to_champion,
    decision_from_dict,
    lineage_mismatch,
    replaces_unservable_champion,
)
from galaxy_assets.evaluation.labels import labels_from_truth
from galaxy_assets.evaluation.metrics import Bootstrap
from galaxy_assets.evaluation.report import EvaluationResult, Scores, evaluate


def _constructed(
    values: dict[str, tuple[float, float]], fingerprint: str = "fp"
) -> EvaluationResult:
    """A result holding only semantic nDCG@10 = value ± std per target (no rankings)."""
    scores = [
        Scores(
            target=t,
            method="semantic",
            query="q",
            n_queries=1,
            ndcg={10: Bootstrap(v, v, s, v - s, v + s, 100, "galaxies")},
            recall={10: math.nan},
            precision={10: math.nan},
            found={10: math.nan},
            curve=[],
            n_ranked=100,
            n_targets=10,
        )
        for t, (v, s) in values.items()
    ]
    targets = {t: {"fingerprint": f"{fingerprint}-{t}"} for t in values}
    return EvaluationResult(
        k_list=(10,),
        curve_k=10,
        n_boot=100,
        seed=0,
        targets=targets,
        scores=scores,
        phrasings=[],
        rankings={},
    )


def test_no_champion_passes_as_first_champion():
    d = compare_to_champion(_constructed({"spirals": (0.5, 0.1)}), None)
    assert d.passed is True
    assert d.reasons == [FIRST_CHAMPION]
    assert d.per_target.height == 0


def test_drop_within_uncertainty_passes_independent_sigma():
    champ = _constructed({"spirals": (0.80, 0.05), "lenses": (0.30, 0.20)})
    cand = _constructed({"spirals": (0.77, 0.05), "lenses": (0.45, 0.20)})
    d = compare_to_champion(cand, champ)
    assert d.passed is True
    row = d.per_target.filter(d.per_target["target"] == "spirals").row(0, named=True)
    assert row["change"] == pytest.approx(-0.03)
    assert row["sigma"] == pytest.approx(math.hypot(0.05, 0.05))
    assert row["uncertainty"] == "independent"
    assert row["passed"] is True


def test_drop_beyond_uncertainty_fails_and_says_why():
    champ = _constructed({"spirals": (0.80, 0.05), "mergers": (0.60, 0.02)})
    cand = _constructed({"spirals": (0.79, 0.05), "mergers": (0.50, 0.02)})
    d = compare_to_champion(cand, champ)
    assert d.passed is False
    failing = d.per_target.filter(~d.per_target["passed"])["target"].to_list()
    assert failing == ["mergers"]
    assert any(r.startswith("mergers:") and "0.600 to 0.500" in r for r in d.reasons)
    # a looser gate (3 σ = 0.085) still fails a 0.10 drop; 4 σ lets it through
    assert compare_to_champion(cand, champ, n_sigma=3).passed is False
    assert compare_to_champion(cand, champ, n_sigma=4).passed is True
    md = d.to_markdown()
    assert "**fails**" in md and "mergers" in md
    back = decision_from_dict(d.to_dict())
    assert back.passed is False and back.reasons == d.reasons


def test_paired_bootstrap_on_evaluated_rankings(world):
    labels = labels_from_truth(world.truth)
    kw = dict(n_boot=100, n_random=2, targets=["spirals", "rings", "edge_on_discs"])
    champion = evaluate(labels, search_fn=world.search_fn(noise=0.1, seed=1), **kw)
    same = evaluate(labels, search_fn=world.search_fn(noise=0.1, seed=1), **kw)
    worse = evaluate(labels, search_fn=world.search_fn(noise=3.0, seed=2), **kw)
    d_same = compare_to_champion(same, champion, labels, n_boot=200)
    assert d_same.passed is True
    assert d_same.per_target["uncertainty"].to_list() == ["paired"] * 3
    assert d_same.per_target["change"].to_list() == [0.0] * 3
    d_worse = compare_to_champion(worse, champion, labels, n_boot=200)
    assert d_worse.passed is False
    assert d_worse.per_target["uncertainty"].to_list() == ["paired"] * 3
    assert (d_worse.per_target["change"] < 0).all()
    # the better model replacing the worse one passes
    assert compare_to_champion(champion, worse, labels, n_boot=200).passed is True
    # identical rankings: the paired σ is 0, the independent σ of graded spirals is not
    assert (
        compare_to_champion(same, champion).per_target["uncertainty"].to_list() == ["paired"] * 3
    )  # the candidate's own labels serve when none are given
    same.labels = None
    d_indep = compare_to_champion(same, champion, None)
    assert (d_indep.per_target["uncertainty"] == "independent").all()
    assert d_indep.per_target.filter(d_indep.per_target["target"] == "spirals")["sigma"][0] > 0
    assert np.allclose(d_same.per_target["sigma"].to_numpy(), 0.0)


def test_gate_guards():
    champ = _constructed({"spirals": (0.8, 0.05), "lenses": (0.3, 0.1)})
    # evaluated on other labels: not comparable
    with pytest.raises(EvaluationError, match="different labels"):
        compare_to_champion(_constructed({"spirals": (0.8, 0.05)}, fingerprint="new"), champ)
    # a target the champion had but the candidate lacks fails; a new target passes
    d = compare_to_champion(_constructed({"spirals": (0.8, 0.05), "rings": (0.5, 0.1)}), champ)
    assert d.passed is False
    assert any("lenses" in r and "candidate was not" in r for r in d.reasons)
    assert any("rings: new target" in r for r in d.reasons)
    # an undefined nDCG (no relevant galaxy) is skipped, not failed
    d2 = compare_to_champion(
        _constructed({"spirals": (math.nan, math.nan), "lenses": (0.3, 0.1)}), champ
    )
    assert d2.passed is True
    # not one target compared (every nDCG undefined): no evidence, the champion stays
    d3 = compare_to_champion(
        _constructed({"spirals": (math.nan, math.nan), "lenses": (math.nan, math.nan)}), champ
    )
    assert d3.passed is False
    assert d3.reasons[0].startswith("no target has an nDCG@10 for both models")
    assert not any("dropped by more than" in r for r in d3.reasons)
    with pytest.raises(EvaluationError, match="nDCG@100"):
        compare_to_champion(champ, champ, k=100)
    with pytest.raises(EvaluationError, match="no 'semantic_rerank' scores"):
        compare_to_champion(champ, champ, method="semantic_rerank")


def test_a_champion_from_another_encoder_is_replaced_without_comparison():
    """A champion trained on other image vectors (a retrained encoder, other test-time views) or
    another text embedder cannot search the current vectors; the candidate replaces it."""
    from types import SimpleNamespace

    def aligner(encoder, embedder="minilm@1"):
        return SimpleNamespace(
            config=SimpleNamespace(image_encoder=encoder, text_embedder=embedder)
        )

    same = aligner("registry:morphology-encoder/v1+rot4")
    assert lineage_mismatch(same, aligner("registry:morphology-encoder/v1+rot4")) is None
    why = lineage_mismatch(aligner("registry:morphology-encoder/v1"), same)
    assert why == (
        "the champion was trained on image encoder 'registry:morphology-encoder/v1', "
        "the candidate on 'registry:morphology-encoder/v1+rot4'"
    )
    both = lineage_mismatch(aligner("a", "minilm@0"), aligner("b", "minilm@1"))
    assert "image encoder 'a'" in both and "text embedder 'minilm@0'" in both
    assert lineage_mismatch(aligner(None), same) is None  # unrecorded: compared as before

    def result(semantic, random_order):
        res = _constructed({t: (v, 0.05) for t, v in semantic.items()})
        chance = _constructed({t: (v, 0.01) for t, v in random_order.items()})
        res.scores += [dataclasses.replace(sc, method="random") for sc in chance.scores]
        return res

    good = result({"spirals": 0.8, "lenses": math.nan}, {"spirals": 0.3, "lenses": 0.0})
    d = replaces_unservable_champion("search-aligner v1", why, good, n_sigma=2.0)
    assert d.passed and d.per_target.height == 0 and d.n_sigma == 2.0
    assert d.reasons[0].startswith("search-aligner v1 cannot be compared: the champion was")
    assert (
        "mean semantic nDCG@10 over 1 targets, 0.800, against random order's 0.300"
        in (d.reasons[0])
    )
    assert "replaces it without a comparison" in d.to_markdown()
    assert decision_from_dict(d.to_dict()).reasons == d.reasons
    # a broken candidate (no better than random order) does not take over
    broken = result({"spirals": 0.25, "mergers": 0.05}, {"spirals": 0.3, "mergers": 0.04})
    d = replaces_unservable_champion("search-aligner v1", why, broken)
    assert not d.passed and "does not beat random order" in d.reasons[0]
    assert "retrain the aligner" in d.reasons[0]
    # nothing to check against: it passes and says so
    alone = replaces_unservable_champion("search-aligner v1", why, _constructed({"x": (0.5, 0.1)}))
    assert alone.passed and "no target has a random baseline" in alone.reasons[0]
