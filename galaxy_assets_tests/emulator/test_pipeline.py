"""The graph steps of the emulator (pipeline.py): which table it trains on, which version
serves, and the clear errors when the survey cannot be used."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from galaxy_assets.emulator import EmulatorConfigError, EmulatorDataError
from galaxy_assets.emulator.model import log_emulator
from galaxy_assets.emulator.pipeline import (
    EmulatorRunConfig,
    ServingEmulator,
    serving_emulator,
    shard_flux_errors,
    shard_posteriors,
    train_evaluate_register,
    training_table,
)
from galaxy_assets_tests.emulator.conftest import gaussian_frame


def test_survey_training_table_joins_photometry_errors_and_truth(tiny_survey):
    table = training_table(EmulatorRunConfig(), tiny_survey.manifest)
    assert len(table) == tiny_survey.manifest.height
    assert set(table.labels) == {"redshift", "log_stellar_mass", "half_light_radius_arcsec",
                                 "sersic_n"}
    assert {"mag_r", "colour_g_r", "mag_err_r"} <= set(table.inputs)
    assert table.features is not None  # the survey recipe travels with the model
    errors = shard_flux_errors(tiny_survey.manifest)
    assert errors.height == tiny_survey.manifest.height
    assert (errors["flux_err_r"].drop_nulls() > 0).all()


def test_training_table_errors_name_the_fix(tiny_survey, tmp_path):
    with pytest.raises(EmulatorConfigError, match="table_config"):
        training_table(EmulatorRunConfig(table=str(tmp_path / "stars.parquet")))
    no_truth = tiny_survey.manifest.with_columns(
        pl.lit(str(tmp_path / "elsewhere.hdf5")).alias("shard_uri"))
    with pytest.raises(EmulatorDataError, match="truth table.*table_config"):
        training_table(EmulatorRunConfig(), no_truth)
    with pytest.raises(EmulatorDataError, match="raw_cutouts is empty"):
        training_table(EmulatorRunConfig(), [])


def test_user_table_with_roles_yaml(tmp_path):
    path = tmp_path / "table.parquet"
    gaussian_frame(50, seed=3).write_parquet(path)
    roles = tmp_path / "roles.yaml"
    roles.write_text("name: toy\nid_column: object_id\ninputs: [x]\nlabels: [y]\n")
    table = training_table(EmulatorRunConfig(table=str(path), table_config=str(roles)))
    assert table.inputs == ("x",) and table.labels == ("y",) and len(table) == 50
    assert table.features is None


def test_serving_falls_back_to_the_newest_version_and_user_models_refuse_shards(
    tracker, gaussian_model, tiny_survey
):
    assert serving_emulator(tracker, required=False) is None
    with pytest.raises(EmulatorConfigError, match="materialize property_emulator"):
        serving_emulator(tracker)
    with tracker.start_run("property-emulator") as run:
        path = log_emulator(run, gaussian_model.model)
    tracker.register(run.run_id, path, "property-emulator")
    serving = serving_emulator(tracker)
    assert isinstance(serving, ServingEmulator) and serving.version == 1
    assert serving.source.startswith("newest version")
    assert serving.emulator_version == "property-emulator/v1"
    tracker.set_alias("property-emulator", "champion", 1)
    assert serving_emulator(tracker).source == "champion"
    # only an unset champion falls back: a mistyped alias must not serve an ungated version
    with pytest.raises(EmulatorConfigError, match="no version with alias 'champoin'"):
        serving_emulator(tracker, "champoin")
    # trained on a user table (x → y): it cannot read survey shards
    with pytest.raises(EmulatorConfigError, match="user table"):
        shard_posteriors(serving, tiny_survey.manifest)


@pytest.mark.parametrize("by", ["object_id", "position"])
def test_labels_from_a_user_catalogue_instead_of_truth_tables(tiny_survey, tmp_path, by):
    """A real survey's labels: a catalogue joined on object_id, or matched by ra/dec (0.3"
    offsets, 1" radius); only its galaxies get labels, the truth tables are not read."""
    import numpy as np

    labelled = tiny_survey.truth.sort("object_id").head(25)
    cat = labelled.select("object_id", "redshift", "log_stellar_mass")
    if by == "position":
        pos = tiny_survey.manifest.select("object_id", "ra", "dec")
        cat = cat.join(pos, on="object_id").with_columns(
            (pl.col("dec") + 0.3 / 3600).alias("dec")).drop("object_id")
    path = tmp_path / "specz.parquet"
    cat.write_parquet(path)
    cfg = EmulatorRunConfig(labels_table=str(path), labels=["redshift", "log_stellar_mass"])
    table = training_table(cfg, tiny_survey.manifest)
    assert table.labels == ("redshift", "log_stellar_mass")
    assert len(table) == tiny_survey.manifest.height  # every galaxy, labelled or not
    z = dict(zip(table.object_ids, table.values(["redshift"])[:, 0], strict=True))
    known = {k for k, v in z.items() if np.isfinite(v)}
    assert known == set(labelled["object_id"])
    for oid, zt in zip(labelled["object_id"], labelled["redshift"], strict=True):
        assert z[oid] == pytest.approx(zt)


def test_labels_table_errors_name_the_problem(tiny_survey, tmp_path):
    path = tmp_path / "specz.parquet"
    tiny_survey.truth.select("object_id", "redshift").write_parquet(path)
    with pytest.raises(EmulatorConfigError, match="lacks the label column.*log_stellar_mass"):
        training_table(EmulatorRunConfig(labels_table=str(path)), tiny_survey.manifest)
    far = tiny_survey.manifest.select("ra", "dec", pl.lit(0.1).alias("redshift")).with_columns(
        pl.col("dec") + 1.0)  # a degree away from every galaxy
    far.write_parquet(path)
    with pytest.raises(EmulatorDataError, match="no row of labels_table"):
        training_table(EmulatorRunConfig(labels_table=str(path), labels=["redshift"]),
                       tiny_survey.manifest)
    with pytest.raises(EmulatorDataError, match="does not exist"):
        training_table(EmulatorRunConfig(labels_table=str(tmp_path / "nope.parquet")),
                       tiny_survey.manifest)


def test_gate_on_a_user_table_checks_its_own_labels(tracker, tmp_path):
    """The asset's default gate names survey labels; on a user table (x -> y) the gate checks
    y instead of failing on labels the table does not have."""
    from galaxy_assets.emulator import make_table
    from galaxy_assets_tests.emulator.conftest import TINY_MODEL

    table = make_table(gaussian_frame(300, seed=5), ["x"], ["y"])
    cfg = EmulatorRunConfig(epochs=3, time_budget_s=None, batch_size=64, model=TINY_MODEL,
                            eval_samples=32, eval_rows=100,
                            gate_labels=["redshift", "log_stellar_mass"])
    out = train_evaluate_register(tracker, table, cfg)
    assert out.registration.version == 1
    assert "redshift" not in out.registration.reason
    assert "not evaluated" not in out.registration.reason
    assert " y" in out.registration.reason  # the gate looked at y
    assert out.report.labels == ["y"] and set(out.figures) == set()
    # under a name of its own: a passing user-table model took the survey's champion, and
    # every shard's posteriors then failed
    assert out.registration.name == "property-emulator-table-frame"
    assert tracker.get_alias_version("property-emulator", "champion") is None
    assert serving_emulator(tracker, required=False) is None
    # its figures are named after it: its v1 overwrote the survey emulator's v1 figures
    again = train_evaluate_register(tracker, table, cfg, figure_dir=tmp_path)
    assert again.figures and all(p.name.startswith("emulator-table-frame_v2_")
                                 for p in again.figures.values())


def test_flux_errors_follow_the_manifest_rows_when_a_shard_repeats_an_id(tmp_path):
    """The manifest keeps one row of a repeated object_id; the flux errors must be that row's,
    one per manifest row (both rows used to stay, and the features stopped lining up)."""
    from galaxy_assets.emulator.data import survey_features
    from galaxy_assets.survey.manifest import build_manifest
    from galaxy_assets.survey.mmu import MMUShardReader, write_mmu_shard

    n, size = 10, 16
    rng = np.random.default_rng(1)
    ids = [f"obj-{i:03d}" for i in range(n)]
    ids[7] = ids[3]
    images = rng.normal(0.0, 0.05, (n, 4, size, size)).astype(np.float32)
    images[3] = np.nan  # row 3 is rejected for its pixels, so the manifest keeps row 7
    ivar = np.full((n, 4, size, size), 1e4, np.float32)
    ivar[7] = 1e2  # row 7's depth differs from every other row's
    path = write_mmu_shard(
        tmp_path / "healpix=7" / "001-of-001.hdf5", images=images, bands=list("griz"),
        object_id=ids, ra=rng.uniform(10, 20, n), dec=rng.uniform(-5, 5, n), ivar=ivar,
        psf_fwhm=1.1, fluxes={b: rng.lognormal(0, 1, n).astype(np.float32) for b in "griz"},
        ebv=np.zeros(n, np.float32))
    with MMUShardReader(path) as reader:
        manifest = build_manifest(reader, "healpix=7__001-of-001").frame
    assert manifest.height == 9 and manifest.filter(pl.col("object_id") == "obj-003")["row"][0] == 7
    errors = shard_flux_errors(manifest)
    assert errors.height == manifest.height and errors["object_id"].is_unique().all()
    err = dict(zip(errors["object_id"], errors["flux_err_r"], strict=True))
    assert err["obj-003"] == pytest.approx(10 * err["obj-000"], rel=1e-3)  # row 7's, not row 3's
    features = survey_features(manifest, flux_errors=errors)
    assert features.height == manifest.height and "mag_err_r" in features.columns


def test_the_gate_scores_held_out_rows_that_did_not_choose_the_weights(tracker, monkeypatch):
    """Early stopping picks the best weights by the loss of some held-out rows; the report
    and the champion gate must be computed on other held-out rows (on the same rows the
    scores are optimistic). The held-out split is halved once by a stable hash."""
    import galaxy_assets.emulator.pipeline as pipeline
    import galaxy_assets.emulator.train as train
    from galaxy_assets.emulator import make_table
    from galaxy_assets_tests.emulator.conftest import TINY_MODEL

    n, step = 400, 0.01
    rng = np.random.default_rng(11)
    x = np.arange(n) * step  # x identifies the row, also after standardisation
    frame = pl.DataFrame({"object_id": [f"h-{i:04d}" for i in range(n)], "x": x,
                          "y": x + 0.5 * rng.normal(size=n)})
    table = make_table(frame, ["x"], ["y"])
    stopped_on: set[str] = set()
    evaluated: set[str] = set()
    real_score, real_evaluate = train._score, pipeline.evaluate_emulator

    def score(model, z, *args, **kwargs):
        xs = model.tokenizer.to_physical(z[:, model.tokenizer.index("x")], "x")
        stopped_on.update(f"h-{int(i):04d}" for i in np.rint(xs / step))
        return real_score(model, z, *args, **kwargs)

    def evaluate(model, held_out, **kwargs):
        evaluated.update(held_out.object_ids.tolist())
        return real_evaluate(model, held_out, **kwargs)

    monkeypatch.setattr(train, "_score", score)
    monkeypatch.setattr(pipeline, "evaluate_emulator", evaluate)
    cfg = EmulatorRunConfig(epochs=2, time_budget_s=None, batch_size=64, model=TINY_MODEL,
                            eval_samples=16, eval_rows=200)
    out = train_evaluate_register(tracker, table, cfg)
    assert stopped_on and evaluated
    assert stopped_on.isdisjoint(evaluated)
    assert stopped_on | evaluated == set(out.result.val_ids)
    assert stopped_on == set(out.result.stop_ids) and evaluated == set(out.result.eval_ids)
    meta = out.metadata()
    assert meta["n_val_early_stopping"] == len(stopped_on)
    assert meta["n_val_evaluation"] == len(evaluated)
    assert out.report.get("y", "diffusion", "all").n == len(evaluated)


def _offset_catalogue(tiny_survey, n=25):
    """``n`` truth rows with the survey's positions, 0.3" north, and without object_id."""
    labelled = tiny_survey.truth.sort("object_id").head(n)
    pos = tiny_survey.manifest.select("object_id", "ra", "dec")
    cat = labelled.select("object_id", "redshift").join(pos, on="object_id").with_columns(
        (pl.col("dec") + 0.3 / 3600).alias("dec"))
    return labelled, cat.drop("object_id")


def _labelled_ids(table) -> set[str]:
    z = table.values(["redshift"])[:, 0]
    return set(table.object_ids[np.isfinite(z)].tolist())


def test_labels_table_position_columns_of_other_names_are_set_in_the_config(
    tiny_survey, tmp_path
):
    """A spectroscopic catalogue's RA/Dec are often RA/DEC or PLUG_RA/PLUG_DEC: the error
    names the emulator's settings (crossmatch's ra_column= is out of a user's reach), and
    with them set the catalogue is matched."""
    labelled, cat = _offset_catalogue(tiny_survey)
    path = tmp_path / "specz.parquet"
    cat.rename({"ra": "PLUG_RA", "dec": "PLUG_DEC"}).write_parquet(path)
    with pytest.raises(EmulatorConfigError, match="labels_ra_column and labels_dec_column"):
        training_table(EmulatorRunConfig(labels_table=str(path), labels=["redshift"]),
                       tiny_survey.manifest)
    cfg = EmulatorRunConfig(labels_table=str(path), labels=["redshift"],
                            labels_ra_column="PLUG_RA", labels_dec_column="PLUG_DEC")
    table = training_table(cfg, tiny_survey.manifest)
    assert _labelled_ids(table) == set(labelled["object_id"])
    assert "by position (PLUG_RA, PLUG_DEC)" in table.summary()["source"]
    # coordinates it cannot read: an emulator error naming the settings, not CatalogueError
    cat.with_columns(pl.lit("10:00:00").alias("ra")).write_parquet(path)
    with pytest.raises(EmulatorDataError, match="labels_ra_column='ra'.*decimal degrees"):
        training_table(EmulatorRunConfig(labels_table=str(path), labels=["redshift"]),
                       tiny_survey.manifest)


def test_labels_table_with_another_surveys_object_ids_is_matched_by_position(
    tiny_survey, tmp_path
):
    """A catalogue with its own object_id column (another survey's ids) and ra/dec: the id
    join matches nothing, so it is matched by position, and the table's source says so."""
    labelled, cat = _offset_catalogue(tiny_survey)
    cat = cat.with_columns(pl.int_range(pl.len()).add(900_000).alias("object_id"))
    path = tmp_path / "specz.parquet"
    cat.write_parquet(path)
    table = training_table(EmulatorRunConfig(labels_table=str(path), labels=["redshift"]),
                           tiny_survey.manifest)
    assert _labelled_ids(table) == set(labelled["object_id"])
    assert "its object_id matched no survey galaxy" in table.summary()["source"]
    # without positions to fall back on: the error says how to give them
    cat.drop("ra", "dec").write_parquet(path)
    with pytest.raises(EmulatorDataError, match="no object_id.*labels_ra_column"):
        training_table(EmulatorRunConfig(labels_table=str(path), labels=["redshift"]),
                       tiny_survey.manifest)
