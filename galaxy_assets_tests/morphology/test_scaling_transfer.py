"""The scaling sweep (power-law fits, report) and the transfer report on tiny data."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from galaxy_assets.morphology import MorphologyError
from galaxy_assets.morphology.data import votes_from_truth
from galaxy_assets.morphology.scaling import (
    ScalingPoint,
    fit_power_law,
    run_sweep,
    scaling_report,
)
from galaxy_assets.morphology.train import TrainConfig, train_morphology
from galaxy_assets.morphology.transfer import (
    TransferConfig,
    roc_auc,
    run_transfer,
    top_block_parameters,
)

TINY = dict(image_size=32, epochs=1, batch_size=16, max_steps=3, eval_batch_size=64)


def test_power_law_fit_recovers_the_exponent():
    rng = np.random.default_rng(0)
    n = np.array([500, 1000, 2000, 4000, 8000, 16000], dtype=float)
    loss = 30.0 * (n / 1000) ** -0.4 + 20.0
    fit = fit_power_law(n, loss * (1 + rng.normal(0, 0.002, n.size)))
    assert fit.form == "a*N^-alpha+c"
    assert fit.alpha == pytest.approx(0.4, abs=0.06) and fit.c == pytest.approx(20, abs=2)
    assert math.isfinite(fit.alpha_err) and fit.alpha_err < 0.1
    assert fit.identifiable and fit.note == ""
    two = fit_power_law([1000, 4000], [50.0, 40.0])
    assert two.form == "a*N^-alpha" and two.alpha == pytest.approx(math.log(50 / 40) / math.log(4))
    assert "c fixed at 0" in two.note
    with pytest.raises(MorphologyError, match="two or more"):
        fit_power_law([1000, 1000], [3.0, 2.0])


def test_a_failed_fit_with_c_says_so(monkeypatch):
    import scipy.optimize

    def fails(*args, **kwargs):
        raise RuntimeError("no convergence")

    monkeypatch.setattr(scipy.optimize, "curve_fit", fails)
    fit = fit_power_law([500, 1000, 2000, 4000, 8000], [40.0, 35.0, 32.0, 30.0, 29.0])
    assert fit.form == "a*N^-alpha" and "did not converge" in fit.note
    assert "four or more needed" not in fit.note


def _flat_points(size, params, ns, losses, qs=("q1",), n_val=50):
    """Points whose held-out loss is ``losses`` (every galaxy the same)."""
    return [
        ScalingPoint(
            n,
            size,
            params,
            float(loss),
            {q: float(loss) / len(qs) for q in qs},
            list(qs),
            np.full((n_val, len(qs)), loss / len(qs), dtype=np.float32),
            "fp",
        )
        for n, loss in zip(ns, losses, strict=True)
    ]


def test_a_fit_on_its_bound_is_flagged_not_identifiable():
    """Four nearly flat losses: curve_fit ends on c = 0 with alpha 0.011 and a ± 1767. That
    used to be reported as a good a·N^-α + c fit (empty note), its α beside real exponents."""
    ns, losses = [500, 1000, 2000, 4000], [35.114, 34.771, 34.643, 34.277]
    fit = fit_power_law(ns, losses)
    assert fit.form == "a*N^-alpha+c" and fit.c < 1e-6
    assert not fit.identifiable
    assert "not identifiable" in fit.note and "c at its bound 0" in fit.note
    pts = _flat_points("tiny", 1000, ns, losses) + _flat_points(
        "big", 9000, ns[:3], [34.0, 33.0, 32.5]
    )
    rep = scaling_report(pts, n_boot=20)
    assert rep.metrics["alpha_identifiable/tiny"] == 0.0
    assert rep.metrics["alpha_identifiable/big"] == 1.0
    assert rep.metrics["alpha_fit_with_c/tiny"] == 1.0
    assert rep.metrics["alpha_fit_with_c/big"] == 0.0
    row = next(line for line in rep.markdown.splitlines() if line.startswith("| tiny | 1,000"))
    assert "(not identifiable)" in row
    assert "tiny: the fit with c is not identifiable" in rep.markdown
    assert "not comparable" in rep.markdown
    _, labels = rep.figure.axes[0].get_legend_handles_labels()
    tiny = next(lab for lab in labels if lab.startswith("tiny"))
    big = next(lab for lab in labels if lab.startswith("big"))
    assert "with c, not identifiable" in tiny and "(c=0)" in big


def test_report_judges_parameters_per_question():
    rng = np.random.default_rng(1)
    qs = ["q1", "q2"]
    pts = []
    for size, params, gain in (("small", 1000, 0.0), ("big", 9000, 1.0)):
        for n in (100, 200, 400, 800):
            base = 10 * (n / 1000) ** -0.3
            pg = np.stack(
                [base + rng.normal(0, 0.3, 300), base - gain + rng.normal(0, 0.3, 300)], 1
            )
            pts.append(
                ScalingPoint(
                    n,
                    size,
                    params,
                    float(pg.sum(1).mean()),
                    dict(zip(qs, pg.mean(0).tolist(), strict=True)),
                    qs,
                    pg.astype(np.float32),
                    "fp",
                )
            )
    rep = scaling_report(pts, n_boot=100)
    assert rep.questions_helped == ["q2"] and rep.questions_hurt == []
    assert rep.verdict.startswith("More parameters help")
    # the intervals resample galaxies of one training run, not training seeds: say so
    assert "for this training seed (0); seed-to-seed variation" in rep.verdict
    assert "seed-to-seed variation is not included" in rep.markdown.split("Per question at")[1]
    assert set(rep.fits) == {"small", "big"} and rep.fits["small"].form == "a*N^-alpha+c"
    assert ScalingPoint.from_dict(pts[0].to_dict()).per_galaxy.shape == (300, 2)
    with pytest.raises(MorphologyError, match="different held-out sets"):
        scaling_report([*pts, ScalingPoint(50, "small", 1000, 1.0, {}, qs, pg, "other")])


def test_per_question_difference_is_over_the_galaxies_asked():
    """A question asked of a fifth of the galaxies: its difference is the gap between the two
    loss columns (over those galaxies), not a fifth of it."""
    qs = ["q1", "q2"]
    asked = np.arange(300) % 5 == 0
    pts = []
    for size, params, q2 in (("small", 1000, 3.0), ("big", 9000, 2.0)):
        for n in (100, 200):
            pg = np.stack([np.full(300, 5.0), np.where(asked, q2, 0.0)], 1).astype(np.float32)
            losses = {"q1": 5.0, "q2": q2}
            pts.append(ScalingPoint(n, size, params, float(pg.sum(1).mean()), losses, qs, pg, "fp"))
    rep = scaling_report(pts, n_boot=50)
    assert rep.metrics["loss_diff/q2"] == pytest.approx(-1.0)
    assert "| q2 | 3.000 | 2.000 | -1.000" in rep.markdown


def test_tiny_two_by_two_sweep_reports_a_fitted_exponent(tiny_survey, tracker):
    votes = votes_from_truth(tiny_survey.manifest)
    points = run_sweep(
        votes,
        ns=(24, 48),
        sizes=("tiny", "small"),
        base_config=TrainConfig(**TINY),
        min_steps=0,
        tracker=tracker,
    )
    assert len(points) == 4 and all(p.run_id for p in points)
    rep = scaling_report(points, n_boot=50)
    assert set(rep.fits) == {"tiny", "small"}
    assert all(math.isfinite(f.alpha) for f in rep.fits.values())
    assert "α" in rep.markdown and "| 24 |" in rep.markdown and "| 48 |" in rep.markdown
    assert f"{rep.fits['tiny'].alpha:.3g}" in rep.markdown
    assert rep.table.height == 4 and len(rep.figure.axes) == 1
    assert "alpha/tiny" in rep.metrics
    with pytest.raises(MorphologyError, match="exceed"):
        run_sweep(votes, ns=(10_000,), sizes=("tiny",), base_config=TrainConfig(**TINY))


def test_scaling_point_reports_on_galaxies_early_stopping_did_not_see(tiny_survey, monkeypatch):
    """The reported loss used to be the best epoch's loss on the very galaxies that chose
    the best epoch (optimistic); now early stopping uses one hash half of the held-out split
    and the point is scored on the other, the same half for every point."""
    from galaxy_assets.morphology import scaling
    from galaxy_assets.morphology.train import fingerprint, prepare_datasets

    base = TrainConfig(**TINY)
    train, val = prepare_datasets(votes_from_truth(tiny_survey.manifest), base)
    seen: list[set[str]] = []
    real = scaling.train_model

    def spy(subset, stop_val, cfg, **kw):
        seen.append(set(map(str, stop_val.object_ids)))
        return real(subset, stop_val, cfg, **kw)

    monkeypatch.setattr(scaling, "train_model", spy)
    pts = [scaling.run_scaling_point(train, val, n, "tiny", base, min_steps=0) for n in (24, 48)]
    stop, report = scaling.split_held_out(val)
    assert len(stop) and len(report) and len(stop) + len(report) == len(val)
    assert seen == [set(map(str, stop.object_ids))] * 2
    assert set(map(str, report.object_ids)).isdisjoint(seen[0])
    for p in pts:
        assert p.per_galaxy.shape[0] == len(report)
        assert p.val_fingerprint == fingerprint(report.object_ids)
        assert p.val_loss == pytest.approx(float(p.per_galaxy.sum(1).mean()), rel=1e-5)
        assert math.isfinite(p.baseline_loss)


def test_transfer_on_tiny_data_returns_a_table(tiny_survey):
    votes = votes_from_truth(tiny_survey.manifest)
    model = train_morphology(votes, TrainConfig(preset="tiny", **TINY)).build_model()
    cfg = TransferConfig(
        label="is_spiral",
        fractions=(0.2, 1.0),
        seeds=(0, 1),
        steps=2,
        batch_size=16,
        min_positives=1,
    )
    rep = run_transfer(model, tiny_survey.manifest, cfg)
    # linear probe and finetune for both encoders, scratch for random only
    assert rep.results.height == 2 * 2 * 5
    assert set(rep.results["method"]) == {"linear_probe", "finetune_top", "scratch"}
    assert rep.results["auc"].is_between(0, 1).all()
    assert rep.summary.height == 2 * 5 and "auc_std" in rep.summary.columns
    assert "| pretrained | linear_probe |" in rep.markdown and "% labels" in rep.markdown
    assert rep.n_test_positive > 0 and len(rep.figure.axes) == 1
    with pytest.raises(MorphologyError, match="no label column 'is_unicorn'"):
        run_transfer(model, tiny_survey.manifest, TransferConfig(label="is_unicorn"))


def _transfer_results(aucs):
    """A results frame: ``aucs[(encoder, method)]`` is the AUC per seed, at fraction 1.0."""
    return pl.DataFrame(
        [
            {
                "encoder": enc,
                "method": method,
                "fraction": 1.0,
                "seed": seed,
                "n_labels": 400,
                "n_positives": 8,
                "auc": auc,
                "seconds": 0.1,
            }
            for (enc, method), per_seed in aucs.items()
            for seed, auc in enumerate(per_seed)
        ]
    )


def test_transfer_verdict_needs_enough_test_positives():
    """With 1 test positive the report used to print "1−AUC increased by 264%" as a finding,
    and "± 0.000" for a cell that is the same on every seed by construction."""
    from galaxy_assets.morphology.transfer import MIN_TEST_POSITIVES, _report

    results = _transfer_results(
        {
            ("pretrained", "linear_probe"): [0.6, 0.6, 0.6],
            ("random", "linear_probe"): [0.85, 0.9, 0.88],
        }
    )
    cfg = TransferConfig(fractions=(1.0,), methods=("linear_probe",))
    few = _report(results, cfg, 400, 8, 120, 1)
    assert 1 < MIN_TEST_POSITIVES <= 14
    assert few.verdict.startswith("No verdict drawn") and "only 1 test positive " in few.verdict
    assert "indicative only" in few.verdict and "increased by" not in few.verdict
    assert few.metrics["verdict_drawn"] == 0.0
    assert "0.600 (deterministic, n=400)" in few.markdown and "± 0.000" not in few.markdown
    assert "0.877 ± 0.025 (n=400)" in few.markdown
    enough = _report(results, cfg, 400, 8, 120, MIN_TEST_POSITIVES)
    assert enough.verdict.startswith("Pretraining on votes") and "increased by" in enough.verdict
    assert enough.metrics["verdict_drawn"] == 1.0
    # no error to reduce (the random encoder ranked perfectly): it printed "nan%"
    perfect = _transfer_results({("pretrained", "linear_probe"): [0.9] * 3,
                                 ("random", "linear_probe"): [1.0] * 3})
    said = _report(perfect, cfg, 400, 8, 120, MIN_TEST_POSITIVES).verdict
    assert "nan" not in said and "without pretraining ranked the test set perfectly" in said


def test_auc_and_top_blocks():
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert math.isnan(roc_auc(np.zeros(3), np.arange(3)))
    import timm

    net = timm.create_model("resnet10t", num_classes=0, channels=[8, 8, 8, 8], stem_width=8)
    top = top_block_parameters(net)
    assert top and all(n.startswith("layer4.") for n in top)
    conv = timm.create_model("convnext_atto", num_classes=0)
    names = top_block_parameters(conv)
    assert names[0].startswith("stages.3.") and any(n.startswith("head.norm") for n in names)


def test_transfer_without_positives_is_refused(tiny_survey):
    from galaxy_assets.morphology.model import build_model, preset_config

    truth = tiny_survey.manifest.select("object_id").with_columns(pl.lit(False).alias("is_lens"))
    model = build_model(preset_config("tiny", image_size=32))
    with pytest.raises(MorphologyError, match="positives and negatives on both sides"):
        run_transfer(model, tiny_survey.manifest, TransferConfig(label="is_lens"), truth=truth)
    # every galaxy positive: no AUC either (the grid used to run and report NaN)
    everyone = truth.with_columns(pl.lit(True).alias("is_lens"))
    with pytest.raises(MorphologyError, match="positives and negatives on both sides"):
        run_transfer(model, tiny_survey.manifest, TransferConfig(label="is_lens"), truth=everyone)
    # a number is not a yes/no label (it used to be cast to True for every non-zero value)
    redshift = truth.with_columns(pl.lit(0.1).alias("redshift"))
    with pytest.raises(MorphologyError, match="'redshift' is Float64, not a yes/no label"):
        run_transfer(model, tiny_survey.manifest, TransferConfig(label="redshift"), truth=redshift)
