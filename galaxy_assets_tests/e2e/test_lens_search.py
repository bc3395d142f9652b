"""End to end (issues 5 and 6): the demo graph on a mock survey, then `galaxy-assets search
"gravitational lens" --k 10 --json`; its top 10 must hold more lenses than a random draw of
10 galaxies would (the figure is printed). The aligner the demo trained must rank a validation
caption's own galaxy in the top 5 for most validation captions; the figure comes from the
aligner's asset metadata, as the demo prints it.

Lenses are 0.5% of the default mock sky: a test-sized survey would hold two or three, too few to
measure anything. This survey raises the lens fraction to 5% (the other types keep their
relative rates); every lens is drawn exactly as in the default sky (same Einstein radii, source
magnitudes and seeing), and the random baseline is computed at the same 5%, so the comparison
stays fair.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import polars as pl
import pytest

from galaxy_assets.cli import ensure_mock_survey
from galaxy_assets.runtime import Home
from galaxy_assets.survey import mock_population
from galaxy_assets.survey.truth import load_truth

# heavy: never beside another multi-process test (pyproject's addopts)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("heavy")]

# seed 5: not one of the surveys the describer's thresholds and feature scores were fitted
# on (7, 11) or checked on (2026)
N, SIZE, SEED, LENS_FRACTION = 800, 32, 5, 0.05


def _cli(home, *args, timeout=1200):
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env["GALAXY_ASSETS_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "galaxy_assets.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_gravitational_lens_top10_beats_random(isolated_home, monkeypatch):
    others = [(name, frac) for name, frac in mock_population.TYPE_FRACTIONS if name != "lens"]
    scale = (1.0 - LENS_FRACTION) / sum(frac for _, frac in others)
    monkeypatch.setattr(mock_population, "TYPE_FRACTIONS",
                        (("lens", LENS_FRACTION), *((n, f * scale) for n, f in others)))
    home = Home.from_env().ensure()
    ensure_mock_survey(home, n=N, size=SIZE, seed=SEED, workers=1)

    demo = _cli(home.root, "demo", "--n", str(N), "--size", str(SIZE), "--seed", str(SEED),
                "--captions", "400", "--emulator-budget", "20")
    out = demo.stdout + demo.stderr
    assert f"reusing {N} galaxies" in out, out[-3000:]
    assert "index_job: ok" in out, out[-4000:]

    # issue 5: a caption's own galaxy is in the top 5 for most validation captions
    recall = re.search(r"val_t2i_recall_at_5 ([0-9.]+)", out)
    assert recall, out[-4000:]
    print(f"\nvalidation text->image R@5 (own galaxy in the top 5): {recall.group(1)}")
    assert float(recall.group(1)) > 0.5, out[-4000:]

    found = _cli(home.root, "search", "gravitational lens", "--k", "10", "--json", timeout=300)
    assert found.returncode == 0, found.stderr[-3000:]
    results = json.loads(found.stdout)
    ids = [r["object_id"] for r in (results["results"] if isinstance(results, dict)
                                    else results)]
    assert len(ids) == 10

    truth = load_truth(sorted(str(p) for p in home.mock_survey.rglob("*.hdf5")))
    lenses = set(truth.filter(pl.col("is_lens"))["object_id"].to_list())
    rate = len(lenses) / truth.height
    in_top10 = sum(i in lenses for i in ids)
    print(f"\n'gravitational lens': {in_top10} lenses in the top 10; random would give "
          f"{10 * rate:.2f} ({len(lenses)} lenses among {truth.height} galaxies)")
    assert in_top10 > 10 * rate
