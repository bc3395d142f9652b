"""Truth rows come out in the same order in every process (the evaluation resamples them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl

from galaxy_assets.survey.truth import load_truth

_SCRIPT = (
    "import json, sys; from galaxy_assets.survey.truth import load_truth; "
    "print(json.dumps(load_truth(sys.argv[1:])['object_id'].to_list()))"
)


def test_load_truth_reads_shards_in_path_order_whatever_the_hash_seed(tmp_path: Path):
    shards = []
    for cell in (7, 3, 11, 5, 2, 13):
        folder = tmp_path / f"healpix={cell}"
        folder.mkdir()
        pl.DataFrame({"object_id": [f"c{cell}-a", f"c{cell}-b"]}).write_parquet(
            folder / "001-of-001.truth.parquet"
        )
        shards.append(str(folder / "001-of-001.hdf5"))
    expected = [
        oid
        for cell in sorted(f"healpix={c}" for c in (7, 3, 11, 5, 2, 13))
        for oid in pl.read_parquet(tmp_path / cell / "001-of-001.truth.parquet")["object_id"]
    ]
    assert load_truth(shards)["object_id"].to_list() == expected
    assert load_truth(reversed(shards))["object_id"].to_list() == expected
    # Path hashes differ between processes (hash randomisation): the order must not
    for seed in ("1", "2", "3"):
        out = subprocess.run(
            [sys.executable, "-c", _SCRIPT, *shards],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        assert json.loads(out.stdout.strip().splitlines()[-1]) == expected, seed
