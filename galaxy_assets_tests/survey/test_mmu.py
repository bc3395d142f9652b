"""MMUShardReader and write_mmu_shard on small synthetic shards."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from galaxy_assets.survey.base import CutoutReader
from galaxy_assets.survey.errors import SurveyConfigError, SurveyFormatError
from galaxy_assets.survey.mmu import (
    MMUShardReader,
    healpix_from_path,
    normalize_band,
    write_mmu_shard,
)


def test_round_trip_catalog_and_pixels(make_shard):
    data = make_shard(n=10)
    with MMUShardReader(data.path) as reader:
        assert isinstance(reader, CutoutReader)
        assert len(reader) == 10
        assert reader.bands == ("g", "r", "i", "z")
        assert reader.uri == os.path.abspath(data.path)
        assert (reader.height, reader.width) == (16, 16)
        cat = reader.catalog()
        assert cat["object_id"].tolist() == data.object_id
        assert cat["object_id"].dtype.kind == "U"
        np.testing.assert_array_equal(cat["ra"], data.ra)
        np.testing.assert_array_equal(cat["dec"], data.dec)
        assert cat["ra"].dtype == np.float64
        for band in "griz":
            np.testing.assert_array_equal(cat[f"flux_{band}"], data.fluxes[band])
            assert cat[f"flux_{band}"].dtype == np.float32
        np.testing.assert_array_equal(cat["ebv"], data.ebv)
        batches = list(reader.iter_batches(4))
    assert [len(b) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b.images for b in batches]), data.images)
    np.testing.assert_array_equal(np.concatenate([b.ivar for b in batches]), data.ivar)
    np.testing.assert_array_equal(np.concatenate([b.rows for b in batches]), np.arange(10))
    assert np.concatenate([b.object_id for b in batches]).tolist() == data.object_id
    assert batches[0].images.dtype == np.float32
    assert batches[0].bands == ("g", "r", "i", "z")


def test_missing_optional_columns_are_nan(make_shard):
    data = make_shard(fluxes={"g": np.ones(12)}, ebv=None, ivar=None, psf_fwhm=None)
    with MMUShardReader(data.path) as reader:
        cat = reader.catalog()
        assert np.all(cat["flux_g"] == 1)
        for band in "riz":
            assert np.isnan(cat[f"flux_{band}"]).all()
        assert np.isnan(cat["ebv"]).all()
        assert not reader.has_ivar
        assert next(reader.iter_batches()).ivar is None
        assert reader.psf_fwhm.shape == (12, 4) and np.isnan(reader.psf_fwhm).all()


@pytest.mark.parametrize(
    "bands",
    [("z", "g"), ("g", "r", "z"), ("r", "i"), ("i",), ("z", "i", "r", "g"), ("DES-R", "DES-Z")],
)
@pytest.mark.parametrize("size", [None, 9, 8, 16])
def test_band_selection_and_centre_crop(make_shard, bands, size):
    data = make_shard(n=7)
    idx = ["griz".index(normalize_band(b)) for b in bands]
    s = size or 16
    o = (16 - s) // 2
    want = data.images[:, idx, o : o + s, o : o + s]
    with MMUShardReader(data.path, bands=bands, size=size) as reader:
        assert reader.bands == tuple(normalize_band(b) for b in bands)
        got = np.concatenate([b.images for b in reader.iter_batches(3)])
        np.testing.assert_array_equal(got, want)
        rows = [6, 0, 3, 3, 1, 2]
        batch = reader.read_rows(rows)
        np.testing.assert_array_equal(batch.images, want[rows])
        np.testing.assert_array_equal(batch.ivar, data.ivar[rows][:, idx, o : o + s, o : o + s])
        assert batch.rows.tolist() == rows
        assert batch.object_id.tolist() == [data.object_id[r] for r in rows]


@pytest.mark.parametrize("rows", [[], [5], [1, 2, 3], [0, 2, 4], [4, 2, 0], [3, 4, 9, 10, 1]])
def test_read_rows_any_order(make_shard, rows):
    data = make_shard(n=11)
    with MMUShardReader(data.path, ivar=False) as reader:
        batch = reader.read_rows(rows)
    assert batch.images.shape == (len(rows), 4, 16, 16)
    assert batch.ivar is None
    np.testing.assert_array_equal(batch.images, data.images[rows])


def test_read_rows_out_of_range(make_shard):
    data = make_shard(n=4)
    with MMUShardReader(data.path) as reader, pytest.raises(IndexError, match="row 4"):
        reader.read_rows([0, 4])


def test_streams_in_batches_never_whole_shard(make_shard, monkeypatch):
    data = make_shard(n=25)
    largest = []
    orig = MMUShardReader._read_runs

    def spy(self, ds, runs, out, dests=None):
        largest.append(out.shape[0])
        return orig(self, ds, runs, out, dests)

    monkeypatch.setattr(MMUShardReader, "_read_runs", spy)
    with MMUShardReader(data.path) as reader:
        assert sum(len(b) for b in reader.iter_batches(8)) == 25
    assert max(largest) == 8


def test_integer_and_mmu_style_ids_and_bands(raw_h5):
    path = raw_h5("ints.hdf5")
    with MMUShardReader(path) as reader:
        assert reader.bands == ("g", "r", "i", "z")
        assert reader.native_bands == ("g", "r", "i", "z")
        assert reader.catalog()["object_id"].tolist() == [str(1000 + i) for i in range(6)]
        assert reader.pixel_scale == pytest.approx(0.262)
        assert reader.psf_fwhm.shape == (6, 4)


def test_u_band_and_unknown_narrow_bands(raw_h5):
    """A u band is read like any other; a plane of a band the package does not know (a
    narrow-band filter) is left unread instead of refusing the shard."""
    images = np.arange(6 * 4 * 8 * 8, dtype=np.float32).reshape(6, 4, 8, 8)
    path = raw_h5("ugrN.hdf5", image_array=images, image_ivar=np.ones_like(images),
                  image_band=np.array([[b"SDSS-U", b"g", b"N501", b"r"]] * 6))
    with MMUShardReader(path) as reader:
        assert reader.bands == ("u", "g", "r")
        np.testing.assert_array_equal(reader.read_rows([2]).images[0], images[2][[0, 1, 3]])
    with MMUShardReader(path, bands=["r", "u"]) as reader:
        np.testing.assert_array_equal(reader.read_rows([1]).images[0], images[1][[3, 0]])
    with pytest.raises(SurveyConfigError, match="unknown band"):
        MMUShardReader(path, bands=["N501"])


def test_padded_fixed_width_ids_are_stripped(raw_h5):
    """Fixed-width byte ids pad with spaces ('a  '); they must equal the same id stored as
    variable-length text, or catalogues and captions never match them."""
    ids = np.array([f"J{i:03d}".ljust(8).encode() for i in range(6)], dtype="S8")
    with MMUShardReader(raw_h5("padded.hdf5", object_id=ids)) as reader:
        assert reader.catalog()["object_id"].tolist() == [f"J{i:03d}" for i in range(6)]


def test_psf_and_pixel_scale(make_shard):
    data = make_shard(psf_fwhm=[1.0, 1.1, 1.2, 1.3], scale=0.168)
    with MMUShardReader(data.path, bands=["z", "g"]) as reader:
        np.testing.assert_allclose(reader.psf_fwhm[0], [1.3, 1.0])
        assert reader.pixel_scale == pytest.approx(0.168)


def test_healpix_from_path():
    assert healpix_from_path("/data/legacysurvey/healpix=1234/001-of-001.hdf5") == 1234
    assert healpix_from_path("healpix=12/sub/healpix=7/x.h5") == 7
    assert healpix_from_path("/data/healpix=5.hdf5") == 5
    assert healpix_from_path("/data/shard.hdf5") is None
    assert healpix_from_path("/data/healpix=abc/x.hdf5") is None


@pytest.mark.parametrize(
    ("raw", "want"),
    [(b"DES-G", "g"), ("HSC-I", "i"), (" r ", "r"), ("g DECam SDSS c0001", "g"), ("Z", "z")],
)
def test_normalize_band(raw, want):
    assert normalize_band(raw) == want


def test_writer_is_atomic_and_creates_parents(tmp_path):
    path = tmp_path / "a" / "b" / "healpix=3" / "x.hdf5"
    images = np.zeros((2, 1, 4, 4), np.float32)
    write_mmu_shard(
        path,
        images=images,
        bands=["r"],
        object_id=["a", "b"],
        ra=[1, 2],
        dec=[0, 0],
        extra={"TYPE": np.array([b"SER", b"EXP"])},
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.hdf5"]
    with h5py.File(path) as f:
        assert f["image_band"].shape == (2, 1)
        assert f["image_band"][0, 0] == b"r"
        assert f["object_id"].dtype.kind == "S"
        assert f["TYPE"][1] == b"EXP"
        assert f["image_array"].chunks is None  # contiguous: fastest slices
    # A failed write leaves neither a temporary file nor a destination behind.
    with pytest.raises(ValueError, match="ivar"):
        write_mmu_shard(
            tmp_path / "c" / "y.hdf5",
            images=images,
            bands=["r"],
            object_id=["a", "b"],
            ra=[1, 2],
            dec=[0, 0],
            ivar=np.zeros((3, 1, 4, 4)),
        )
    # A write that fails half-way through the file keeps the shard already there whole.
    before = path.read_bytes()
    real = h5py.File.create_dataset

    def fail_on_ra(self, name, *args, **kwargs):
        if name == "ra":
            raise OSError("disk full")
        return real(self, name, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(h5py.Group, "create_dataset", fail_on_ra)
        with pytest.raises(OSError, match="disk full"):
            write_mmu_shard(path, images=np.ones((2, 1, 4, 4), np.float32), bands=["r"],
                            object_id=["c", "d"], ra=[3, 4], dec=[0, 0])
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.hdf5"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"images": np.zeros((2, 4, 4))}, "images"),
        ({"bands": ["g", "r"]}, "bands"),
        ({"ra": [1.0]}, "ra"),
        ({"fluxes": {"g": [1.0, 2.0, 3.0]}}, "fluxes"),
        ({"psf_fwhm": [1.0, 2.0, 3.0]}, "psf_fwhm"),
    ],
)
def test_writer_rejects_inconsistent_inputs(tmp_path, kwargs, match):
    args = dict(
        images=np.zeros((2, 1, 4, 4)), bands=["r"], object_id=["a", "b"], ra=[1, 2], dec=[0, 0]
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        write_mmu_shard(tmp_path / "x.hdf5", **args)
    assert not list(tmp_path.iterdir())


def test_bad_settings_are_config_errors(make_shard):
    data = make_shard()
    with pytest.raises(SurveyConfigError, match="size"):
        MMUShardReader(data.path, size=0)
    with pytest.raises(SurveyConfigError, match="unknown band"):
        MMUShardReader(data.path, bands=["q"])
    with MMUShardReader(data.path) as reader, pytest.raises(SurveyConfigError):
        next(reader.iter_batches(0))


def test_close_is_idempotent_and_closed_reader_refuses(make_shard):
    data = make_shard()
    reader = MMUShardReader(data.path)
    reader.close()
    reader.close()
    with pytest.raises(SurveyConfigError, match="closed"):
        reader.read_rows([0])


def test_byte_string_ids_are_written_as_their_text(tmp_path):
    """Ids copied from another MMU shard come back from h5py as bytes: they are stored as
    their text, not as the literal "b'39627'"."""
    from galaxy_assets.survey.mmu import MMUShardReader, write_mmu_shard

    images = np.ones((2, 4, 8, 8), np.float32)
    path = write_mmu_shard(tmp_path / "s.hdf5", images=images, bands=list("griz"),
                           object_id=np.array([b"39627", b"39628"]), ra=[1.0, 2.0],
                           dec=[0.0, 0.0])
    with MMUShardReader(path) as reader:
        assert reader.object_id.tolist() == ["39627", "39628"]


def test_a_corrupt_chunk_costs_only_its_galaxy(tmp_path):
    """Real MMU shards are gzip-chunked: one unreadable chunk made the whole shard fail. Its
    row is read as NaN and left out with the reason; the other galaxies are kept."""
    from galaxy_assets.survey.manifest import build_manifest

    path = tmp_path / "healpix=5" / "001-of-001.hdf5"
    path.parent.mkdir()
    n = 12
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.create_dataset("image_array", data=rng.normal(1, 0.1, (n, 4, 16, 16)).astype("f4"),
                         chunks=(1, 4, 16, 16), compression="gzip")
        f.create_dataset("image_band", data=np.array([[b"des-g", b"des-r", b"des-i",
                                                       b"des-z"]] * n))
        f.create_dataset("object_id", data=np.array([f"o{i}".encode() for i in range(n)]))
        f.create_dataset("ra", data=rng.uniform(0, 10, n))
        f.create_dataset("dec", data=rng.uniform(0, 10, n))
    with h5py.File(path, "r") as f:
        info = f["image_array"].id.get_chunk_info(7)
    with open(path, "r+b") as fh:  # overwrite row 7's compressed chunk
        fh.seek(info.byte_offset + 10)
        fh.write(b"\xff" * (info.size - 20))
    with MMUShardReader(path) as reader:
        result = build_manifest(reader, "healpix=5__001-of-001")
    assert result.n_kept == n - 1
    (rejected,) = result.rejected
    assert rejected["row"] == 7 and rejected["object_id"] == "o7"
    assert "unreadable image_array" in rejected["reason"]
    # a batch holding only the corrupt row (the short last batch of a file cut short): still
    # that galaxy alone
    with MMUShardReader(path) as reader:
        result = build_manifest(reader, "healpix=5__001-of-001", batch_size=1)
    assert result.n_kept == n - 1 and [r["row"] for r in result.rejected] == [7]
    # every chunk broken: after three whole batches the file is refused (read on row by row,
    # a large shard would take hours)
    with h5py.File(path, "r") as f:
        chunks = [f["image_array"].id.get_chunk_info(i) for i in range(n)]
    with open(path, "r+b") as fh:
        for info in chunks:
            fh.seek(info.byte_offset + 10)
            fh.write(b"\xff" * (info.size - 20))
    with MMUShardReader(path) as reader:
        with pytest.raises(SurveyFormatError, match="reading rows"):
            build_manifest(reader, "healpix=5__001-of-001", batch_size=2)
        assert len(reader.rejected) == 4  # two batches read row by row, then refused
