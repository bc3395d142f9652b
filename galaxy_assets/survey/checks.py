"""Quality checks on a shard's manifest (run as blocking Dagster asset checks).

Each function returns a CheckOutcome; the Dagster layer turns it into an AssetCheckResult.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandera.errors
import polars as pl

from galaxy_assets.survey.schema import MANIFEST_SCHEMA

# A galaxy counts as "damaged" when more than this fraction of its pixels are NaN/inf.
DAMAGED_PIXEL_FRACTION = 0.05
# The shard fails when more than this fraction of its galaxies are damaged.
MAX_DAMAGED_GALAXY_FRACTION = 0.02


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    description: str
    metadata: dict[str, object] = field(default_factory=dict)


def check_schema(frame: pl.DataFrame) -> CheckOutcome:
    """The manifest matches the pandera schema (types, ranges, unique object_id)."""
    try:
        MANIFEST_SCHEMA.validate(frame, lazy=True)
    except (pandera.errors.SchemaErrors, pandera.errors.SchemaError) as exc:
        text = str(exc)
        return CheckOutcome("manifest_schema", False, f"schema violations: {text[:2000]}")
    return CheckOutcome("manifest_schema", True, f"{frame.height} rows match the manifest schema")


def check_finite(
    frame: pl.DataFrame,
    *,
    damaged_pixel_fraction: float = DAMAGED_PIXEL_FRACTION,
    max_damaged_fraction: float = MAX_DAMAGED_GALAXY_FRACTION,
) -> CheckOutcome:
    """Few galaxies have many NaN/inf pixels (all-NaN galaxies were already rejected)."""
    n = frame.height
    damaged = int((frame["nonfinite_fraction"] > damaged_pixel_fraction).sum()) if n else 0
    fraction = damaged / n if n else 0.0
    mean_pixels = float(frame["nonfinite_fraction"].mean() or 0.0) if n else 0.0
    passed = n > 0 and fraction <= max_damaged_fraction
    desc = (
        f"{damaged} of {n} galaxies have more than {damaged_pixel_fraction:.0%} non-finite "
        f"pixels ({fraction:.2%}; limit {max_damaged_fraction:.0%})"
        if n
        else "the manifest is empty"
    )
    return CheckOutcome(
        "finite_pixels",
        passed,
        desc,
        {"damaged_galaxies": damaged, "damaged_fraction": fraction,
         "mean_nonfinite_pixel_fraction": mean_pixels},
    )


def check_consistency(frame: pl.DataFrame, expected_bands: Iterable[str]) -> CheckOutcome:
    """Every galaxy has the configured bands, in order, and one cutout shape (band names
    compared as the readers store them: ``DES-G`` and ``G`` are ``g``)."""
    from galaxy_assets.survey.mmu import normalize_band

    expected = ",".join(normalize_band(b) for b in expected_bands)
    bands = sorted(frame["bands"].unique().to_list())
    shapes = sorted(
        {(int(h), int(w)) for h, w in frame.select("height", "width").unique().iter_rows()}
    )
    problems = []
    if bands != [expected]:
        problems.append(f"bands {bands} differ from the configured {expected!r}")
    if len(shapes) > 1:
        problems.append(f"{len(shapes)} cutout shapes {shapes[:5]} (expected one)")
    passed = not problems and frame.height > 0
    desc = "; ".join(problems) if problems else f"bands {expected!r}, shape {shapes[0] if shapes else None}"
    return CheckOutcome(
        "bands_and_shape", passed, desc,
        {"bands": ",".join(bands), "shapes": str(shapes[:5])},
    )


def check_unique_across_shards(
    frame: pl.DataFrame, shard: str, other_manifests: Iterable[Path | str]
) -> CheckOutcome:
    """No object_id of this shard appears in the stored manifest of any other shard."""
    ids = frame.select("object_id")
    dup_frames = []
    n_others = 0
    unreadable = []
    for path in other_manifests:
        n_others += 1
        try:
            other = pl.scan_parquet(path).select("object_id", "shard")
            hits = other.join(ids.lazy(), on="object_id", how="inner").collect()
        except (pl.exceptions.PolarsError, OSError) as exc:  # one bad manifest: recorded
            unreadable.append(f"{Path(path).name} ({type(exc).__name__})")
            continue
        if hits.height:
            dup_frames.append(hits)
    dups = pl.concat(dup_frames) if dup_frames else pl.DataFrame(
        {"object_id": [], "shard": []}, schema={"object_id": pl.Utf8, "shard": pl.Utf8}
    )
    passed = dups.height == 0
    if passed:
        desc = f"no object_id of {shard} appears in the {n_others} other shard manifests"
        if unreadable:
            desc += (f"; {len(unreadable)} could not be read and were not compared: "
                     f"{unreadable[:5]} (rematerialize raw_cutouts for those shards)")
    else:
        shards = sorted(set(dups["shard"].to_list()))
        sample = dups["object_id"].head(5).to_list()
        desc = (
            f"{dups.height} object_ids of {shard} also appear in shard(s) {shards[:5]}, "
            f"e.g. {sample}; remove the overlapping shard from survey.roots or deduplicate it"
        )
    return CheckOutcome(
        "unique_object_ids", passed, desc,
        {"duplicates": dups.height, "other_shards_checked": n_others - len(unreadable),
         "unreadable_manifests": len(unreadable)},
    )
