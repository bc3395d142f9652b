"""Shard discovery, partition keys and reader dispatch."""

from __future__ import annotations

from pathlib import Path

import pytest

from galaxy_assets.survey.errors import SurveyConfigError, SurveyFormatError
from galaxy_assets.survey.fits import FitsFolderReader
from galaxy_assets.survey.mmu import MMUShardReader
from galaxy_assets.survey.readers import find_shards, open_shard, resolve_shard, shard_key


@pytest.fixture
def survey_root(tmp_path, make_shard, make_fits_folder) -> Path:
    make_shard("healpix=22/001-of-001.hdf5", n=3)
    make_shard("healpix=1/001-of-002.hdf5", n=3)
    make_shard("healpix=1/002-of-002.h5", n=3)
    make_fits_folder("fits/field_a", n=2)
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "x.hdf5").write_bytes(b"")
    (tmp_path / "healpix=1" / ".001-of-003.hdf5.ab12.tmp").write_bytes(b"")
    (tmp_path / "healpix=1" / ".hidden.hdf5").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a shard")
    return tmp_path


def test_find_shards_and_keys(survey_root):
    shards = find_shards(survey_root)
    rel = [p.relative_to(survey_root).as_posix() for p in shards]
    assert rel == [
        "fits/field_a",
        "healpix=1/001-of-002.hdf5",
        "healpix=1/002-of-002.h5",
        "healpix=22/001-of-001.hdf5",
    ]
    keys = [shard_key(survey_root, p) for p in shards]
    assert keys == [
        "fits__field_a",
        "healpix=1__001-of-002",
        "healpix=1__002-of-002",
        "healpix=22__001-of-001",
    ]
    for key, path in zip(keys, shards, strict=True):
        assert resolve_shard([survey_root], key) == path
        assert resolve_shard(str(survey_root), key) == path


def test_root_may_be_a_shard_itself(survey_root):
    folder = survey_root / "fits" / "field_a"
    assert find_shards(folder) == [folder]
    assert shard_key(folder, folder) == "field_a"
    assert resolve_shard([folder], "field_a") == folder
    one = survey_root / "healpix=22" / "001-of-001.hdf5"
    assert find_shards(one) == [one]
    assert shard_key(one, one) == "001-of-001"


def test_resolve_unknown_and_ambiguous(tmp_path, make_shard):
    make_shard("a/healpix=1/x.hdf5", n=2)
    make_shard("b/healpix=1/x.hdf5", n=2)
    with pytest.raises(SurveyConfigError, match="no shard with partition key 'nope'"):
        resolve_shard([tmp_path / "a"], "nope")
    with pytest.raises(SurveyConfigError, match="ambiguous"):
        resolve_shard([tmp_path / "a", tmp_path / "b"], "healpix=1__x")


def test_symlinked_shard_folders_are_found_once(tmp_path, make_shard):
    """A root whose cell folders are links to another disk finds their shards, as
    resolve_shard does; a link cycle does not loop."""
    make_shard("disk/healpix=7/001-of-001.hdf5", n=2)
    root = tmp_path / "root"
    root.mkdir()
    (root / "healpix=7").symlink_to(tmp_path / "disk" / "healpix=7", target_is_directory=True)
    (root / "healpix=7" / "loop").symlink_to(root, target_is_directory=True)
    shards = find_shards(root)
    assert [p.relative_to(root).as_posix() for p in shards] == ["healpix=7/001-of-001.hdf5"]
    assert resolve_shard([root], "healpix=7__001-of-001") == shards[0]


def test_find_shards_missing_root(tmp_path):
    with pytest.raises(SurveyConfigError, match="does not exist"):
        find_shards(tmp_path / "nowhere")


def test_shard_key_outside_root(tmp_path):
    with pytest.raises(SurveyConfigError, match="not under"):
        shard_key(tmp_path / "a", tmp_path / "b" / "x.hdf5")


def test_open_shard_dispatch(survey_root):
    with open_shard(survey_root / "healpix=22" / "001-of-001.hdf5", bands=["g"], size=8) as r:
        assert isinstance(r, MMUShardReader) and r.bands == ("g",) and r.size == 8
    with open_shard(f"file://{survey_root}/fits/field_a", ivar=False) as r:
        assert isinstance(r, FitsFolderReader) and len(r) == 2
        assert next(r.iter_batches()).ivar is None


def test_open_shard_refuses_other_paths(survey_root):
    with pytest.raises(SurveyFormatError, match="does not exist"):
        open_shard(survey_root / "missing.hdf5")
    with pytest.raises(SurveyFormatError, match="neither an HDF5 shard nor a folder") as err:
        open_shard(survey_root / "notes.txt")
    assert "notes.txt" in str(err.value) and "expected an MMU HDF5 shard" in str(err.value)
    single = next((survey_root / "fits" / "field_a").iterdir())
    with pytest.raises(SurveyFormatError, match="put the cutouts in a folder"):
        open_shard(single)
