"""Vote tables, the held-out split, and pixels for training.

A :class:`VoteTable` is one validated row per labelled galaxy: ``object_id``, where its
pixels are (``shard_uri``, ``row``, from the ``raw_cutouts`` manifest), one integer column per
answer of the decision tree (``<question>_<answer>``) and one ``<question>_total-votes`` per
question. It comes from

* the mock survey's truth tables (:func:`votes_from_truth`), or
* a user's Galaxy Zoo catalogue (:func:`votes_from_catalogue`): Parquet, CSV or FITS with
  ``object_id`` (or ``ra``/``dec``, matched on the sky) and the vote-count columns.

Validation (:func:`validate_votes`): missing vote columns or non-numeric columns are errors;
rows with negative or non-integer counts, with no vote at all, with ids that match no galaxy
of the manifest, or repeating an id are skipped and counted (``on_bad="raise"`` makes them
errors instead). Nulls/NaNs count as 0 votes (Galaxy Zoo catalogues leave unasked questions
empty). When more than ``max_bad_fraction`` of the rows are bad the table is refused: it is
more likely a wrong table than a few bad rows.

The train/validation split is a pure function of ``object_id`` (:func:`hash_split`), so a
galaxy stays on its side when the table grows. Pixels are read through the survey readers,
shard by shard in row order (:func:`load_cutouts`), into memory.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from galaxy_assets.morphology.decision_tree import DecisionTree, default_tree
from galaxy_assets.morphology.errors import MorphologyError

log = logging.getLogger(__name__)

__all__ = [
    "MANIFEST_KEYS",
    "VoteDataset",
    "VoteTable",
    "batch_indices",
    "hash_split",
    "hash_unit",
    "load_cutouts",
    "load_vote_catalogue",
    "validate_votes",
    "votes_from_catalogue",
    "votes_from_truth",
]

MANIFEST_KEYS = ("object_id", "shard_uri", "row")
SPLIT_SALT = "galaxy-assets/morphology/split"
SKIP_REASONS = (
    "negative_counts", "non_integer_counts", "infinite_counts", "no_votes", "duplicate_id",
    "unmatched_id",
)
_EXAMPLES = 5


# --------------------------------------------------------------------------- split
def hash_unit(
    object_ids: Sequence[str] | np.ndarray | pl.Series, salt: str = SPLIT_SALT
) -> np.ndarray:
    """A number in [0, 1) per object_id: blake2b of ``salt/object_id`` (stable everywhere)."""
    out = np.empty(len(object_ids), dtype=np.float64)
    prefix = salt.encode() + b"/"
    for i, oid in enumerate(object_ids):
        digest = hashlib.blake2b(prefix + str(oid).encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / 2.0**64
    return out


def hash_split(
    object_ids: Sequence[str] | np.ndarray | pl.Series,
    val_fraction: float = 0.2,
    salt: str = SPLIT_SALT,
) -> np.ndarray:
    """Boolean mask, True for the held-out (validation) galaxies."""
    if not 0.0 < val_fraction < 1.0:
        raise MorphologyError(f"val_fraction must be in (0, 1), got {val_fraction}")
    return hash_unit(object_ids, salt) < val_fraction


# --------------------------------------------------------------------------- vote table
@dataclass
class VoteTable:
    """Validated vote counts joined to pixel locations; see the module docstring."""

    frame: pl.DataFrame
    tree: DecisionTree
    source: str = "<frame>"
    n_input: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    nulls_as_zero: int = 0
    totals_recomputed: int = 0

    def __len__(self) -> int:
        return self.frame.height

    @property
    def object_ids(self) -> np.ndarray:
        return self.frame["object_id"].to_numpy().astype(str)

    def counts(self) -> np.ndarray:
        """Vote counts ``(N, n_answers)`` int32 in the tree's flat answer layout."""
        return self.frame.select(self.tree.answer_columns).to_numpy().astype(np.int32)

    @property
    def n_skipped(self) -> int:
        return int(sum(self.skipped.values()))

    def subset(self, mask_or_index: np.ndarray) -> VoteTable:
        """Rows selected by a boolean mask or an index array (skips are not carried over)."""
        idx = np.asarray(mask_or_index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return VoteTable(self.frame[idx.tolist()], self.tree, source=self.source, n_input=len(idx))

    def split(
        self, val_fraction: float = 0.2, salt: str = SPLIT_SALT
    ) -> tuple[VoteTable, VoteTable]:
        """(train, validation) by :func:`hash_split` of ``object_id``."""
        is_val = hash_split(self.object_ids, val_fraction, salt)
        if is_val.all() or not is_val.any():
            raise MorphologyError(
                f"{len(self)} labelled galaxies give an empty {'train' if is_val.all() else 'validation'} "
                f"split at val_fraction={val_fraction}; label more galaxies"
            )
        return self.subset(~is_val), self.subset(is_val)

    def summary(self) -> dict[str, Any]:
        """Counts for Dagster metadata: input rows, kept, skipped by reason, examples."""
        out: dict[str, Any] = {
            "source": self.source,
            "n_input": self.n_input,
            "n_kept": len(self),
            "n_skipped": self.n_skipped,
            "nulls_as_zero": self.nulls_as_zero,
            "totals_recomputed": self.totals_recomputed,
        }
        for reason in SKIP_REASONS:
            out[f"skipped_{reason}"] = int(self.skipped.get(reason, 0))
        if self.examples:
            out["skipped_examples"] = {k: v for k, v in self.examples.items() if v}
        return out


def _require_manifest(manifest: pl.DataFrame) -> None:
    missing = [c for c in MANIFEST_KEYS if c not in manifest.columns]
    if missing:
        raise MorphologyError(
            f"the manifest lacks columns {missing}; pass the raw_cutouts manifest (it has "
            f"{list(MANIFEST_KEYS)} among its columns)"
        )


def _fail_or_skip(
    reason: str,
    bad: np.ndarray,
    ids: np.ndarray,
    what: str,
    on_bad: str,
    skipped: dict[str, int],
    examples: dict[str, list[str]],
    source: str,
) -> None:
    n = int(bad.sum())
    if n == 0:
        return
    ex = [str(x) for x in ids[bad][:_EXAMPLES]]
    if on_bad == "raise":
        raise MorphologyError(
            f"vote table {source}: {n} row(s) {what} (e.g. object_id {ex}); fix the "
            "catalogue, or use on_bad='skip' to drop such rows"
        )
    skipped[reason] = skipped.get(reason, 0) + n
    examples[reason] = ex
    log.warning("vote table %s: skipping %d row(s) that %s (e.g. %s)", source, n, what, ex)


def validate_votes(
    frame: pl.DataFrame,
    manifest: pl.DataFrame,
    tree: DecisionTree | None = None,
    *,
    source: str = "<frame>",
    on_bad: str = "skip",
    max_bad_fraction: float = 0.5,
) -> VoteTable:
    """Check a frame with ``object_id`` and vote columns against ``tree`` and ``manifest``.

    See the module docstring for what is an error and what is a counted skip.
    """
    if on_bad not in ("skip", "raise"):
        raise MorphologyError(f"on_bad must be 'skip' or 'raise', got {on_bad!r}")
    tree = tree or default_tree()
    _require_manifest(manifest)
    if "object_id" not in frame.columns:
        raise MorphologyError(
            f"vote table {source} has no object_id column; give object_id, or ra/dec to match "
            "on the sky (votes_from_catalogue)"
        )
    answer_cols = list(tree.answer_columns)
    missing = tree.missing_columns(frame.columns)
    if missing:
        example = answer_cols[0]
        raise MorphologyError(
            f"vote table {source} lacks {len(missing)} vote column(s) of tree {tree.name!r}: "
            f"{missing[:8]}{' …' if len(missing) > 8 else ''}. Columns are named "
            f"<question>_<answer> (e.g. {example!r}); rename them, or load the tree the "
            f"catalogue was made with (DecisionTree.from_file)"
        )
    non_numeric = [
        f"{c} ({frame.schema[c]})"
        for c in answer_cols
        if not (frame.schema[c].is_numeric() or frame.schema[c] == pl.Null)
    ]
    if non_numeric:
        raise MorphologyError(
            f"vote table {source}: vote columns must hold numbers, these do not: "
            f"{non_numeric[:8]}; convert them to integer counts"
        )
    n_input = frame.height
    if n_input == 0:
        raise MorphologyError(f"vote table {source} is empty")
    ids = frame["object_id"].cast(pl.Utf8).to_numpy().astype(str)
    raw = frame.select([pl.col(c).cast(pl.Float64) for c in answer_cols]).to_numpy()
    nulls = np.isnan(raw)  # null or NaN: no votes recorded for that answer
    nulls_as_zero = int(nulls.any(axis=1).sum())
    counts = np.where(nulls, 0.0, raw)

    skipped: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    keep = np.ones(n_input, dtype=bool)

    def check(reason: str, bad: np.ndarray, what: str) -> None:
        bad = bad & keep
        _fail_or_skip(reason, bad, ids, what, on_bad, skipped, examples, source)
        keep[bad] = False

    check("infinite_counts", np.isinf(counts).any(axis=1), "have infinite vote counts")
    check("negative_counts", (counts < 0).any(axis=1), "have negative vote counts")
    check(
        "non_integer_counts",
        (counts != np.round(counts)).any(axis=1),
        "have non-integer vote counts",
    )
    check("no_votes", counts.sum(axis=1) == 0, "have no votes at all (all-zero rows)")
    # the first usable row of an id is kept (a bad first copy does not cost the good one)
    usable = np.flatnonzero(keep)
    _, first = np.unique(ids[usable], return_index=True)
    dup = keep.copy()
    dup[usable[first]] = False
    check("duplicate_id", dup, "repeat an object_id already in the table")
    known = set(manifest["object_id"].cast(pl.Utf8).to_list())
    unmatched = np.fromiter((oid not in known for oid in ids), dtype=bool, count=n_input)
    if unmatched.all():
        raise MorphologyError(
            f"vote table {source}: none of its {n_input} object_ids matches a galaxy of the "
            f"manifest (table ids look like {ids[:3].tolist()}, manifest ids like "
            f"{manifest['object_id'].head(3).to_list()}); match on ra/dec instead, or point "
            "the table at the survey it was made for"
        )
    check("unmatched_id", unmatched, "match no galaxy of the manifest")

    n_bad = n_input - int(keep.sum())
    if keep.sum() == 0 or n_bad > max_bad_fraction * n_input:
        raise MorphologyError(
            f"vote table {source}: {n_bad} of {n_input} rows are unusable "
            f"({ {k: v for k, v in skipped.items()} }), more than max_bad_fraction="
            f"{max_bad_fraction}; this looks like the wrong table or the wrong tree"
        )

    kept_counts = counts[keep].astype(np.int32)
    data: dict[str, Any] = {"object_id": ids[keep]}
    for j, col in enumerate(answer_cols):
        data[col] = kept_counts[:, j]
    totals_recomputed = 0
    for q, (a, b) in zip(tree.questions, tree.answer_index_ranges(), strict=True):
        total = kept_counts[:, a:b].sum(axis=1).astype(np.int32)
        if q.total_column in frame.columns:
            given = frame[q.total_column].cast(pl.Float64).to_numpy()[keep]
            # an empty total (a question not asked) is filled in, not a disagreement
            totals_recomputed += int((np.isfinite(given) & (given != total)).sum())
        data[q.total_column] = total
    votes = pl.DataFrame(data)
    locs = manifest.select(
        pl.col("object_id").cast(pl.Utf8),
        pl.col("shard_uri").cast(pl.Utf8),
        pl.col("row").cast(pl.Int64),
    ).unique(subset="object_id", keep="first")
    out = votes.join(locs, on="object_id", how="inner", maintain_order="left")
    # sorted by object_id: the same table in any row order gives the same training run
    out = out.select(["object_id", "shard_uri", "row", *answer_cols, *tree.total_columns]).sort(
        "object_id"
    )
    if totals_recomputed:
        log.warning(
            "vote table %s: %d total-votes values disagreed with the answer sums; the "
            "sums are used",
            source,
            totals_recomputed,
        )
    table = VoteTable(
        out,
        tree,
        source=source,
        n_input=n_input,
        skipped=skipped,
        examples=examples,
        nulls_as_zero=nulls_as_zero,
        totals_recomputed=totals_recomputed,
    )
    log.info(
        "vote table %s: %d of %d rows kept, skipped %s",
        source,
        len(table),
        n_input,
        skipped or "none",
    )
    return table


def votes_from_truth(
    manifest: pl.DataFrame,
    tree: DecisionTree | None = None,
    *,
    on_bad: str = "skip",
    max_bad_fraction: float = 0.5,
) -> VoteTable:
    """Votes from the mock survey's truth tables beside the manifest's shards."""
    from galaxy_assets.survey.truth import load_truth

    _require_manifest(manifest)
    uris = manifest["shard_uri"].unique().to_list()
    truth = load_truth(uris)
    if truth is None:
        raise MorphologyError(
            f"none of the {len(uris)} shards has a truth table (<shard>.truth.parquet), so there "
            "are no simulated votes; give the morphology_encoder asset a Galaxy Zoo vote table "
            "(its config's vote_catalogue: /path/to/gz_votes.parquet), or embed images with a "
            "pretrained encoder (image_encoder.kind: timm or aion), which needs no votes"
        )
    truth = truth.filter(pl.col("object_id").is_in(manifest["object_id"].implode()))
    return validate_votes(
        truth,
        manifest,
        tree,
        source="mock truth tables",
        on_bad=on_bad,
        max_bad_fraction=max_bad_fraction,
    )


def load_vote_catalogue(path: str | Path) -> pl.DataFrame:
    """Read a vote catalogue: ``.parquet``, ``.csv`` or FITS (``.fits``, ``.fit``, ``.fits.gz``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MorphologyError(
            f"vote catalogue {path} does not exist; set the morphology encoder's vote "
            "catalogue to a Parquet, CSV or FITS file"
        )
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            return pl.read_parquet(path)
        if name.endswith(".csv"):
            return pl.read_csv(path, infer_schema_length=10000)
        if name.endswith((".fits", ".fit", ".fits.gz", ".fit.gz")):
            from astropy.table import Table

            table = Table.read(path)
            return pl.from_pandas(table.to_pandas())
    except MorphologyError:
        raise
    except Exception as exc:
        raise MorphologyError(f"vote catalogue {path} cannot be read: {exc}") from exc
    raise MorphologyError(f"vote catalogue {path}: unknown format; use .parquet, .csv or .fits")


def votes_from_catalogue(
    catalogue: pl.DataFrame | str | Path,
    manifest: pl.DataFrame,
    tree: DecisionTree | None = None,
    *,
    id_column: str = "object_id",
    ra_column: str = "ra",
    dec_column: str = "dec",
    match_radius_arcsec: float = 1.0,
    on_bad: str = "skip",
    max_bad_fraction: float = 0.5,
) -> VoteTable:
    """Votes from a user catalogue, matched to the manifest by id or by position.

    With ``id_column`` present, rows match on it; otherwise ``ra``/``dec`` (degrees) are
    matched to the nearest manifest galaxy within ``match_radius_arcsec`` (rows farther away
    count as ``unmatched_id``).
    """
    source = str(catalogue) if not isinstance(catalogue, pl.DataFrame) else "<catalogue frame>"
    frame = catalogue if isinstance(catalogue, pl.DataFrame) else load_vote_catalogue(catalogue)
    _require_manifest(manifest)
    if id_column in frame.columns:
        frame = frame.with_columns(pl.col(id_column).cast(pl.Utf8).alias("object_id"))
    elif ra_column in frame.columns and dec_column in frame.columns:
        frame = _match_on_sky(frame, manifest, ra_column, dec_column, match_radius_arcsec, source)
    else:
        raise MorphologyError(
            f"vote catalogue {source} has neither an id column {id_column!r} nor "
            f"{ra_column!r}/{dec_column!r}; its columns start {frame.columns[:8]}"
        )
    return validate_votes(
        frame, manifest, tree, source=source, on_bad=on_bad, max_bad_fraction=max_bad_fraction
    )


def _match_on_sky(
    frame: pl.DataFrame,
    manifest: pl.DataFrame,
    ra_col: str,
    dec_col: str,
    radius: float,
    source: str,
) -> pl.DataFrame:
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    for c in ("ra", "dec"):
        if c not in manifest.columns:
            raise MorphologyError(f"matching {source} on the sky needs {c!r} in the manifest")
    ra = frame[ra_col].cast(pl.Float64).to_numpy()
    dec = frame[dec_col].cast(pl.Float64).to_numpy()
    ok = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90)
    cat = SkyCoord(ra=np.where(ok, ra, 0.0) * u.deg, dec=np.where(ok, dec, 0.0) * u.deg)
    ref = SkyCoord(ra=manifest["ra"].to_numpy() * u.deg, dec=manifest["dec"].to_numpy() * u.deg)
    idx, sep, _ = cat.match_to_catalog_sky(ref)
    matched = ok & (sep.arcsec <= radius)
    ids = manifest["object_id"].cast(pl.Utf8).to_numpy().astype(str)[idx]
    # unmatched rows get an id no manifest has, so validation counts them as unmatched_id
    oid = np.where(
        matched, ids, np.char.add("<no match within radius> row ", np.arange(len(ra)).astype(str))
    )
    log.info(
        "vote catalogue %s: %d of %d rows matched within %.2f arcsec",
        source,
        int(matched.sum()),
        len(ra),
        radius,
    )
    return frame.with_columns(pl.Series("object_id", oid, dtype=pl.Utf8))


# --------------------------------------------------------------------------- pixels
def load_cutouts(
    frame: pl.DataFrame,
    bands: Sequence[str],
    size: int | None,
    *,
    batch_size: int = 512,
    max_bytes: int = 8 << 30,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Pixels of ``frame``'s galaxies ``(N, B, size, size)`` float32, in ``frame`` order.

    Reads shard by shard (``shard_uri``) with the survey readers, rows sorted, in batches.
    Raises :class:`MorphologyError` when a shard's row holds another object_id than the
    frame says (a manifest out of date with its shards) or the stack exceeds ``max_bytes``.
    """
    from galaxy_assets.survey.readers import open_shard

    for c in MANIFEST_KEYS:
        if c not in frame.columns:
            raise MorphologyError(f"load_cutouts needs column {c!r} (from the manifest)")
    n = frame.height
    uris = frame["shard_uri"].to_numpy().astype(str)
    rows = frame["row"].to_numpy().astype(np.int64)
    ids = frame["object_id"].to_numpy().astype(str)
    out: np.ndarray | None = None
    done = 0
    for uri in dict.fromkeys(uris.tolist()):
        pos = np.flatnonzero(uris == uri)
        pos = pos[np.argsort(rows[pos], kind="stable")]
        with open_shard(uri, bands=list(bands), size=size, ivar=False) as reader:
            for s in range(0, len(pos), batch_size):
                p = pos[s : s + batch_size]
                batch = reader.read_rows(rows[p])
                if out is None:
                    shape = (n, *batch.images.shape[1:])
                    need = int(np.prod(shape)) * 4
                    if need > max_bytes:
                        raise MorphologyError(
                            f"{n} cutouts of shape {shape[1:]} need {need / 2**30:.1f} GiB, "
                            f"more than max_bytes={max_bytes / 2**30:.1f} GiB; label fewer "
                            "galaxies, use a smaller cutout size, or raise the limit"
                        )
                    out = np.empty(shape, dtype=np.float32)
                got = np.asarray(batch.object_id).astype(str)
                wrong = got != ids[p]
                if wrong.any():
                    k = int(np.flatnonzero(wrong)[0])
                    raise MorphologyError(
                        f"{uri} row {int(rows[p][k])} holds object_id {got[k]!r}, but the "
                        f"manifest says {ids[p][k]!r}; the manifest is stale, rematerialize "
                        "raw_cutouts for this shard"
                    )
                out[p] = batch.images
                done += len(p)
                if progress is not None:
                    progress(done, n)
    if out is None:
        raise MorphologyError("load_cutouts got an empty frame: no galaxies to read")
    return out


class VoteDataset(torch.utils.data.Dataset):
    """In-memory cutouts ``(N, B, H, W)`` float32 with vote counts ``(N, n_answers)``."""

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        counts: np.ndarray | torch.Tensor,
        object_ids: Sequence[str] | np.ndarray,
        tree: DecisionTree,
    ) -> None:
        self.images = torch.as_tensor(images, dtype=torch.float32)
        self.counts = torch.as_tensor(np.asarray(counts), dtype=torch.float32)
        self.object_ids = np.asarray(object_ids).astype(str)
        self.tree = tree
        if not (len(self.images) == len(self.counts) == len(self.object_ids)):
            raise MorphologyError(
                f"images ({len(self.images)}), counts ({len(self.counts)}) and object_ids "
                f"({len(self.object_ids)}) differ in length"
            )
        if self.counts.shape[1] != tree.n_answers:
            raise MorphologyError(
                f"counts have {self.counts.shape[1]} columns, tree {tree.name!r} has "
                f"{tree.n_answers} answers"
            )

    @classmethod
    def from_votes(
        cls,
        votes: VoteTable,
        bands: Sequence[str],
        size: int | None,
        *,
        batch_size: int = 512,
        max_bytes: int = 8 << 30,
        progress: Callable[[int, int], None] | None = None,
    ) -> VoteDataset:
        images = load_cutouts(
            votes.frame, bands, size, batch_size=batch_size, max_bytes=max_bytes, progress=progress
        )
        return cls(images, votes.counts(), votes.object_ids, votes.tree)

    def __len__(self) -> int:
        return len(self.object_ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.counts[i]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return self.images[idx], self.counts[idx]

    def subset(self, index: np.ndarray | Sequence[int]) -> VoteDataset:
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        t = torch.as_tensor(idx, dtype=torch.long)
        return VoteDataset(self.images[t], self.counts[t], self.object_ids[idx], self.tree)


def batch_indices(
    n: int,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[torch.Tensor]:
    """Index batches over ``range(n)`` (shuffled with ``generator`` when ``shuffle``)."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - (n % batch_size) if drop_last and n >= batch_size else n
    for s in range(0, stop, batch_size):
        yield order[s : s + batch_size]
