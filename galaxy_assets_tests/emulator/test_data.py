"""Tables: validation and skips, user Parquet with a column-role config, the survey catalogue."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import yaml

from galaxy_assets.emulator import (
    EmulatorConfigError,
    EmulatorDataError,
    FeatureSpec,
    build_survey_table,
    example_config,
    flux_errors_from_shard,
    load_table,
    load_table_config,
    make_table,
    survey_features,
    survey_input_subsets,
)


def _frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "object_id": ["a", "b", "c", "d", "e", "b"],
            "x": [1.0, 2.0, None, 4.0, 5.0, 9.0],
            "z": [0.1, 0.2, None, 0.4, float("nan"), 0.0],
            "y": [1.0, None, None, 3.0, 2.0, 7.0],
        }
    )


# --------------------------------------------------------------------------- validation
def test_rows_with_nothing_known_and_repeated_ids_are_skipped_and_counted():
    table = make_table(_frame(), ["x", "z"], ["y"])
    assert table.object_ids.tolist() == ["a", "b", "d", "e"]
    assert table.skipped == {"nothing_known": 1, "null_id": 0, "duplicate_id": 1}
    assert table.n_input_rows == 6 and table.n_skipped == 2
    values = table.values()
    assert math.isnan(values[3, 1])  # NaN stays missing
    assert table.summary()["rows_skipped"] == 2


@pytest.mark.parametrize(
    ("column", "values", "match"),
    [
        ("x", [None] * 6, "every value is missing"),
        ("x", [3.0] * 6, "constant"),
        ("x", [1.0, math.inf, 2.0, 3.0, 4.0, 5.0], "infinite"),
        ("x", ["1", "2", "3", "4", "5", "6"], "not a number"),
    ],
)
def test_bad_columns_are_clear_errors(column, values, match):
    frame = _frame().with_columns(pl.Series(column, values, strict=False))
    with pytest.raises(EmulatorDataError, match=match) as info:
        make_table(frame, ["x", "z"], ["y"])
    assert "x:" in str(info.value)


def test_unknown_columns_and_double_roles_are_config_errors():
    with pytest.raises(EmulatorConfigError, match=r"unknown column\(s\) \['colour'\]"):
        make_table(_frame(), ["x", "colour"], ["y"])
    with pytest.raises(EmulatorConfigError, match="both inputs and labels"):
        make_table(_frame(), ["x", "y"], ["y"])
    with pytest.raises(EmulatorConfigError, match="unknown column"):
        make_table(_frame(), ["x"], ["y"], id_column="source_id")
    with pytest.raises(EmulatorConfigError, match="id column 'object_id' is also an input"):
        make_table(_frame(), ["x", "object_id"], ["y"])


def test_an_input_pattern_does_not_take_the_id_column():
    frame = pl.DataFrame(
        {"source_id": [10**15 + i for i in range(20)], "bp_1": np.linspace(0, 1, 20),
         "rp_1": np.linspace(1, 0, 20) ** 2, "teff": np.linspace(4000, 6000, 20)}
    )
    table = load_table(frame, {"id_column": "source_id", "inputs": ["*"], "labels": ["teff"]})
    assert table.inputs == ("bp_1", "rp_1") and table.id_column == "source_id"


def test_table_without_ids_numbers_its_rows():
    table = make_table(_frame().drop("object_id"), ["x"], ["y"], id_column=None)
    assert table.id_column == "row_id"
    assert table.object_ids.tolist()[:2] == ["0", "1"]


# --------------------------------------------------------------------------- user tables
def _stars(n: int = 30) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    data = {"source_id": np.arange(n, dtype=np.int64) + 10**15}
    for band in ("bp", "rp"):
        for k in range(5):
            data[f"{band}_coef_{k}"] = rng.normal(size=n)
    for name in ("phot_g_mean_mag", "bp_rp", "j_mag", "h_mag", "k_mag", "parallax"):
        data[name] = rng.normal(size=n)
    data.update(
        teff=rng.normal(5000, 500, n),
        logg=rng.normal(3, 1, n),
        m_h=rng.normal(0, 0.3, n),
        alpha_m=rng.normal(0.1, 0.05, n),
        unrelated=rng.normal(size=n),
    )
    return pl.DataFrame(data)


def test_example_gaia_xp_config_loads_a_stellar_table(tmp_path):
    path = tmp_path / "stars.parquet"
    _stars().write_parquet(path)
    table = load_table(path, example_config("gaia_xp_apogee"))
    assert table.labels == ("teff", "logg", "m_h", "alpha_m")
    assert table.inputs[:3] == ("bp_coef_0", "bp_coef_1", "bp_coef_2")
    assert len(table.inputs) == 16 and "unrelated" not in table.columns
    assert table.id_column == "source_id" and len(table) == 30
    assert table.object_ids[0] == str(10**15)


def test_config_errors_name_the_problem(tmp_path):
    path = tmp_path / "stars.parquet"
    _stars().write_parquet(path)
    cfg = yaml.safe_load(example_config().read_text())
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**cfg, "inputs": ["bp_coef_*", "ebv", "xp_*"]}))
    with pytest.raises(EmulatorConfigError, match=r"unknown column name\(s\) \['ebv', 'xp_\*'\]"):
        load_table(path, bad)
    bad.write_text(yaml.safe_dump({**cfg, "outputs": ["teff"]}))
    with pytest.raises(EmulatorConfigError, match=r"unknown key\(s\) \['outputs'\]"):
        load_table_config(bad)
    bad.write_text(yaml.safe_dump({**cfg, "labels": []}))
    with pytest.raises(EmulatorConfigError, match="labels is empty"):
        load_table_config(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(EmulatorConfigError, match="expected a mapping"):
        load_table_config(bad)
    with pytest.raises(EmulatorConfigError, match="does not exist"):
        load_table_config(tmp_path / "nope.yaml")
    with pytest.raises(EmulatorConfigError, match="no example config"):
        example_config("sdss")


def test_config_as_mapping_with_a_constant_label_is_a_data_error():
    frame = _stars().with_columns(pl.lit(4000.0).alias("teff"))
    config = {"id_column": "source_id", "inputs": ["bp_coef_*"], "labels": ["teff", "logg"]}
    with pytest.raises(EmulatorDataError, match="teff: constant"):
        load_table(frame, config)


# --------------------------------------------------------------------------- survey
def _fake_predictions(manifest: pl.DataFrame) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    n = manifest.height
    cols = {"object_id": manifest["object_id"], "row": manifest["row"]}
    for name in ("p_smooth", "p_featured", "p_spiral", "p_merger"):
        cols[name] = rng.random(n)
    return pl.DataFrame(cols)


def _fake_embeddings(manifest: pl.DataFrame, dim: int = 16) -> pl.DataFrame:
    rng = np.random.default_rng(1)
    vec = rng.normal(size=(manifest.height, dim)).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    return pl.DataFrame(
        {
            "object_id": manifest["object_id"],
            "encoder": ["morphology-encoder/v1"] * manifest.height,
            "vector": pl.Series(vec, dtype=pl.Array(pl.Float32, dim)),
        }
    )


def test_flux_errors_come_from_the_shard_depth(tiny_survey):
    uri = tiny_survey.manifest["shard_uri"][0]
    errors = flux_errors_from_shard(uri)
    in_shard = tiny_survey.manifest.filter(pl.col("shard_uri") == uri)
    assert set(errors["object_id"]) == set(in_shard["object_id"])
    for band in "griz":
        err = errors[f"flux_err_{band}"].to_numpy()
        assert np.all(np.isfinite(err)) and np.all(err > 0)
    # point-source 5-sigma depth near the survey medians (g 24.6 … z 23.0 mag)
    from galaxy_assets.survey.mock_photometry import PSF_DEPTH_MEDIAN, nmgy_to_mag

    for band in "gz":
        depth = nmgy_to_mag(5 * np.median(errors[f"flux_err_{band}"].to_numpy()))
        assert abs(depth - PSF_DEPTH_MEDIAN[band]) < 0.3


def test_survey_table_from_the_mock_survey(tiny_survey):
    manifest = tiny_survey.manifest
    errors = pl.concat(
        [flux_errors_from_shard(u) for u in manifest["shard_uri"].unique().to_list()]
    )
    table = build_survey_table(
        manifest,
        tiny_survey.truth,
        predictions=_fake_predictions(manifest),
        embeddings=_fake_embeddings(manifest),
        flux_errors=errors,
        n_components=4,
    )
    assert table.labels == ("redshift", "log_stellar_mass", "half_light_radius_arcsec", "sersic_n")
    for col in ("mag_g", "mag_z", "colour_g_r", "colour_i_z", "mag_err_r", "p_spiral", "pc_4"):
        assert col in table.inputs, col
    assert len(table) == manifest.height
    frame = table.frame.join(manifest.select("object_id", "flux_r", "ebv"), on="object_id").join(
        tiny_survey.truth.select("object_id", "mag_r"), on="object_id", suffix="_true"
    )
    # bright galaxies: asinh magnitude = extinction-corrected Pogson magnitude
    bright = frame.filter(pl.col("flux_r") > 50)
    pogson = 22.5 - 2.5 * np.log10(bright["flux_r"].to_numpy()) - 2.165 * bright["ebv"].to_numpy()
    np.testing.assert_allclose(bright["mag_r"].to_numpy(), pogson, atol=2e-3)
    # the noisy catalogue magnitude follows the noiseless truth (which includes extinction)
    true_dered = frame["mag_r_true"].to_numpy() - 2.165 * frame["ebv"].to_numpy()
    assert np.median(np.abs(frame["mag_r"].to_numpy() - true_dered)) < 0.1
    np.testing.assert_allclose(
        frame["colour_g_r"].to_numpy(), (frame["mag_g"] - frame["mag_r"]).to_numpy()
    )
    assert (frame["mag_err_r"].to_numpy() > 0).all()
    truth = tiny_survey.truth.select("object_id", "redshift")
    joined = table.frame.join(truth, on="object_id", suffix="_t")
    np.testing.assert_array_equal(joined["redshift"], joined["redshift_t"])
    # the recipe (with its PCA) rebuilds the same inputs for inference, without the truth
    spec = FeatureSpec.from_config(table.features)
    again = survey_features(
        manifest,
        predictions=_fake_predictions(manifest),
        embeddings=_fake_embeddings(manifest),
        flux_errors=errors,
        spec=spec,
    )
    for col in table.inputs:
        np.testing.assert_allclose(
            again.sort("object_id")[col].to_numpy(),
            table.frame.sort("object_id")[col].to_numpy(),
            rtol=1e-6,
            atol=1e-6,
        )
    subsets = survey_input_subsets(table.inputs)
    assert subsets["two_bands"] == ["mag_g", "mag_r", "colour_g_r", "mag_err_g", "mag_err_r"]
    assert subsets["image_embedding"] == ["pc_1", "pc_2", "pc_3", "pc_4"]
    assert "p_spiral" not in subsets["photometry"]


def test_embedding_inputs_come_from_the_encoder_the_pca_was_fitted_on(tiny_survey, caplog):
    """Vectors of another encoder with the same width (a new encoder champion) are not
    projected with the old PCA; a training set mixing encoders is refused."""
    manifest = tiny_survey.manifest
    emb = _fake_embeddings(manifest)
    table = build_survey_table(manifest, tiny_survey.truth, embeddings=emb, n_components=4)
    spec = FeatureSpec.from_config(table.features)
    assert spec.embedding_encoder == "morphology-encoder/v1"
    half = manifest.height // 2
    newer = emb.with_columns(
        pl.when(pl.int_range(pl.len()) < half)
        .then(pl.lit("morphology-encoder/v2"))
        .otherwise(pl.col("encoder"))
        .alias("encoder")
    )
    with caplog.at_level("WARNING"):
        features = survey_features(manifest, embeddings=newer, spec=spec)
    assert "not morphology-encoder/v1" in caplog.text and "retrain property_emulator" in caplog.text
    by_id = dict(zip(features["object_id"], features["pc_1"], strict=True))
    ids = newer["object_id"].to_list()
    assert all(by_id[o] is None for o in ids[:half])
    assert all(by_id[o] is not None for o in ids[half:])
    with pytest.raises(EmulatorDataError, match="2 encoders.*re-embed"):
        build_survey_table(manifest, tiny_survey.truth, embeddings=newer, n_components=4)


def test_morphology_inputs_come_from_the_encoder_the_emulator_learned(tiny_survey, caplog):
    """The p_* inputs are one morphology encoder's vote fractions: the recipe names it,
    another encoder's fractions (a new champion) are left out with a warning, and a training
    set mixing encoders is refused, as for the image embeddings."""
    manifest = tiny_survey.manifest
    preds = _fake_predictions(manifest).with_columns(pl.lit("morphology-encoder/v1").alias("encoder"))
    table = build_survey_table(manifest, tiny_survey.truth, predictions=preds)
    spec = FeatureSpec.from_config(table.features)
    assert spec.morphology_encoder == "morphology-encoder/v1"
    half = manifest.height // 2
    newer = preds.with_columns(
        pl.when(pl.int_range(pl.len()) < half).then(pl.lit("morphology-encoder/v2"))
        .otherwise(pl.col("encoder")).alias("encoder"))
    with caplog.at_level("WARNING"):
        features = survey_features(manifest, predictions=newer, spec=spec)
    assert "not morphology-encoder/v1 the emulator was trained on" in caplog.text
    by_id = dict(zip(features["object_id"], features["p_spiral"], strict=True))
    ids = newer["object_id"].to_list()
    assert all(by_id[o] is None for o in ids[:half])
    assert all(by_id[o] is not None for o in ids[half:])
    with pytest.raises(EmulatorDataError, match="2 morphology encoders"):
        build_survey_table(manifest, tiny_survey.truth, predictions=newer)


def test_survey_table_drops_unusable_derived_columns(tiny_survey):
    manifest = tiny_survey.manifest.with_columns(pl.lit(None, dtype=pl.Float32).alias("flux_i"))
    table = build_survey_table(manifest, tiny_survey.truth)
    assert "mag_i" not in table.inputs and "mag_i" in table.dropped
    assert "colour_r_i" not in table.inputs
    with pytest.raises(EmulatorConfigError, match="lacks label"):
        build_survey_table(manifest, tiny_survey.truth, labels=["redshift", "age"])
    with pytest.raises(EmulatorConfigError, match="no fitted PCA"):
        survey_features(manifest, embeddings=_fake_embeddings(manifest))


def test_survey_table_trains_evaluates_and_summarises(tiny_survey, tracker):
    """The path the assets take, on 40 mock galaxies: table → train → evaluate on the input
    subsets → register → posteriors for new rows rebuilt from the model's own recipe."""
    from galaxy_assets.emulator import (
        TrainConfig,
        evaluate_emulator,
        load_emulator,
        posterior_summaries,
        register_emulator,
        summary_columns,
        train_emulator,
    )
    from galaxy_assets_tests.emulator.conftest import TINY_MODEL

    manifest = tiny_survey.manifest
    errors = pl.concat(
        [flux_errors_from_shard(u) for u in manifest["shard_uri"].unique().to_list()]
    )
    kwargs = {
        "predictions": _fake_predictions(manifest),
        "embeddings": _fake_embeddings(manifest),
        "flux_errors": errors,
    }
    table = build_survey_table(manifest, tiny_survey.truth, n_components=4, **kwargs)
    res = train_emulator(table, TrainConfig(epochs=3, val_fraction=0.3, model=TINY_MODEL))
    assert res.model.targets == table.labels
    subsets = survey_input_subsets(table.inputs)
    report, _ = evaluate_emulator(res.model, table, subsets=subsets, n_samples=50)
    assert {m.subset for m in report.metrics} == set(subsets)
    reg = register_emulator(tracker, res, report=report)
    model, version = load_emulator(tracker, reg.version)
    assert version == reg.version
    spec = FeatureSpec.from_config(model.config.features)
    inputs = survey_features(manifest, spec=spec, **kwargs)
    assert "redshift" not in inputs.columns  # inference never reads the truth
    summary = posterior_summaries(model, inputs, n_samples=50)
    for label in table.labels:
        for col in summary_columns(label):
            assert col in summary.frame.columns
    assert summary.frame.height == manifest.height
    assert summary.frame["redshift_p16"].le(summary.frame["redshift_p84"]).all()
