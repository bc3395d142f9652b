"""The caption store: every caption ever made or imported, keyed by (object_id, backend, model,
prompt_sha, pixels).

A Parquet file in the home folder, rewritten atomically on each append, so reruns caption only
galaxies with no caption for the same (backend, model, prompt_sha) described from the same
pixels, and changing the backend, the model, the prompt, the crop or the bands drawn
recaptions. ``pixels`` says what the captioner was shown, e.g. ``"z,r,g@64x64"`` (see
:func:`galaxy_assets.captioning.run.described_pixels`); it is null for imported captions and for
captions stored before it was recorded. Failures go to a separate table with their reason; a
failed galaxy has no caption.

Several processes may use one store at once (``captions_job`` while ``galaxy-assets
import-captions`` runs): every read-merge-write holds an exclusive lock on ``.store.lock`` in
the store folder, and a read opens the file once, so it sees one whole version of it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from galaxy_assets.captioning.base import CaptionerError
from galaxy_assets.runtime import exclusive_file_lock

log = logging.getLogger(__name__)

CAPTION_SCHEMA: dict[str, pl.DataType] = {
    "object_id": pl.Utf8(),
    "caption": pl.Utf8(),
    "backend": pl.Utf8(),
    "model": pl.Utf8(),
    "prompt_sha": pl.Utf8(),
    "source": pl.Utf8(),  # "generated" or where imported captions came from
    "created_at": pl.Datetime("us", "UTC"),
    # what the captioner was shown: the bands drawn and the crop, e.g. "z,r,g@64x64"; null for
    # imported captions and for captions stored before this column existed
    "pixels": pl.Utf8(),
}
FAILURE_SCHEMA: dict[str, pl.DataType] = {
    "object_id": pl.Utf8(),
    "backend": pl.Utf8(),
    "model": pl.Utf8(),
    "prompt_sha": pl.Utf8(),
    "reason": pl.Utf8(),
    "created_at": pl.Datetime("us", "UTC"),
}
# one caption per galaxy, captioner and pixels: the same model name under another backend
# (a local transformers folder and an endpoint serving that name) is another captioner, and a
# caption of a 64 px crop does not describe the 96 px crop (both are kept: going back reuses)
KEY = ["object_id", "backend", "model", "prompt_sha", "pixels"]
# one failure row per galaxy and captioner: its latest try, whatever pixels it was shown
FAILURE_KEY = ["object_id", "backend", "model", "prompt_sha"]
LOCK_NAME = ".store.lock"


def _write_atomic(frame: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        frame.write_parquet(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """The table at ``path`` in ``schema`` (columns it lacks, from an older store, are null).

    The file is opened once and read from that handle: given a path, polars opens it twice
    (the footer, then the pages), and a writer's ``os.replace`` between the two opens made it
    read one version's footer with another's pages ("parquet: File out of specification").
    An open handle keeps the version it opened, whatever replaces the path meanwhile.
    """
    try:
        with open(path, "rb") as handle:
            frame = pl.read_parquet(handle)
    except FileNotFoundError:
        return pl.DataFrame(schema=schema)
    return (
        frame.with_columns(
            pl.lit(None, dtype=dtype).alias(name)
            for name, dtype in schema.items()
            if name not in frame.columns
        )
        .select(list(schema))
        .cast(schema)
    )


def now() -> datetime:
    return datetime.now(UTC)


class CaptionStore:
    """Captions and caption failures under ``folder`` (``captions.parquet``, ``caption_failures.parquet``)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.captions_path = self.folder / "captions.parquet"
        self.failures_path = self.folder / "caption_failures.parquet"
        self.lock_path = self.folder / LOCK_NAME

    def captions(self) -> pl.DataFrame:
        return _read(self.captions_path, CAPTION_SCHEMA)

    def failures(self) -> pl.DataFrame:
        return _read(self.failures_path, FAILURE_SCHEMA)

    def missing(
        self,
        object_ids: Sequence[str],
        model: str,
        prompt_sha: str,
        backend: str | None = None,
        pixels: Sequence[str | None] | None = None,
    ) -> list[str]:
        """The ids with no caption for (model, prompt_sha) — and ``backend`` when given —, in
        the given order. With ``pixels`` (one entry per id: what the captioner would be shown
        now), a caption counts only when it was described from those pixels; an entry of None
        accepts a caption of any pixels."""
        have = self.captions().filter(
            (pl.col("model") == model)
            & (pl.col("prompt_sha") == prompt_sha)
            & (pl.lit(True) if backend is None else pl.col("backend") == backend)
        )
        any_pixels = set(have["object_id"].to_list())
        if pixels is None:
            return [oid for oid in object_ids if oid not in any_pixels]
        if len(pixels) != len(object_ids):
            raise ValueError(f"{len(pixels)} pixels entries for {len(object_ids)} object ids")
        done = set(zip(have["object_id"].to_list(), have["pixels"].to_list(), strict=True))
        return [
            oid
            for oid, px in zip(object_ids, pixels, strict=True)
            if (oid not in any_pixels if px is None else (oid, px) not in done)
        ]

    def adopt_unrecorded(
        self, pixels: dict[str, str], backend: str, model: str, prompt_sha: str
    ) -> int:
        """Stamp the captions of this captioner stored before ``pixels`` was recorded (null)
        with the pixels their galaxy would be shown now (``pixels``: object_id -> pixels).

        Such a caption is taken as described from the current pixels, once: a store written
        before the column existed is not recaptioned whole, and a later change of crop or bands
        recaptions it like any other. Returns how many captions were stamped.
        """
        if not pixels:
            return 0
        with exclusive_file_lock(self.lock_path):
            captions = self.captions()
            unrecorded = (
                pl.col("pixels").is_null()
                & (pl.col("backend") == backend)
                & (pl.col("model") == model)
                & (pl.col("prompt_sha") == prompt_sha)
                & pl.col("object_id").is_in(list(pixels))
            )
            n = int(captions.select(unrecorded.sum()).item())
            if n:
                lookup = pl.DataFrame(
                    {"object_id": list(pixels), "_now": list(pixels.values())},
                    schema={"object_id": pl.Utf8, "_now": pl.Utf8},
                )
                stamped = (
                    captions.join(lookup, on="object_id", how="left", maintain_order="left")
                    .with_columns(
                        pl.when(unrecorded)
                        .then(pl.col("_now"))
                        .otherwise(pl.col("pixels"))
                        .alias("pixels")
                    )
                    .drop("_now")
                    .unique(subset=KEY, keep="last", maintain_order=True)
                )
                _write_atomic(stamped, self.captions_path)
        return n

    def add(self, captions: pl.DataFrame | None, failures: pl.DataFrame | None = None) -> None:
        """Upsert captions on (object_id, backend, model, prompt_sha, pixels); record failures.

        A galaxy that now has a caption loses its earlier failure rows for the same captioner,
        and a galaxy that failed again keeps only its latest failure (a rerun retries failures).
        Holds the store's lock from the reads it merges with to the last write, so that
        concurrent writers (two processes) add to each other instead of overwriting.
        """
        if captions is None:
            captions = pl.DataFrame(schema=CAPTION_SCHEMA)
        if "pixels" not in captions.columns:
            captions = captions.with_columns(pl.lit(None, dtype=pl.Utf8).alias("pixels"))
        captions = captions.select(list(CAPTION_SCHEMA)).cast(CAPTION_SCHEMA)
        if not captions.height and failures is None:
            return
        with exclusive_file_lock(self.lock_path):
            self._merge(captions, failures)

    def _merge(self, captions: pl.DataFrame, failures: pl.DataFrame | None) -> None:
        if captions.height:
            merged = pl.concat([self.captions(), captions]).unique(
                subset=KEY, keep="last", maintain_order=True
            )
            _write_atomic(merged, self.captions_path)
        old_failures = self.failures()
        if captions.height and old_failures.height:
            old_failures = old_failures.join(
                captions.select(FAILURE_KEY), on=FAILURE_KEY, how="anti"
            )
        if failures is not None and failures.height:
            failures = failures.select(list(FAILURE_SCHEMA)).cast(FAILURE_SCHEMA)
            if old_failures.height:
                old_failures = old_failures.join(
                    failures.select(FAILURE_KEY), on=FAILURE_KEY, how="anti"
                )
            latest = failures.unique(subset=FAILURE_KEY, keep="last", maintain_order=True)
            old_failures = pl.concat([old_failures, latest])
        if failures is not None or captions.height:
            _write_atomic(old_failures, self.failures_path)

    def import_table(self, path: str | Path, source: str | None = None) -> int:
        """Import captions made elsewhere: a Parquet or CSV with ``object_id`` and ``caption``
        (the published AION-Search descriptions are such a table). Rows become captions with
        backend ``import``, model = ``source`` (default: the file name). Returns the count."""
        path = Path(path)
        if not path.is_file():
            raise CaptionerError(f"caption table {path} does not exist")
        suffix = path.suffix.lower()
        try:
            if suffix == ".parquet":
                table = pl.read_parquet(path)
            elif suffix in (".csv", ".tsv"):
                table = pl.read_csv(
                    path,
                    separator="\t" if suffix == ".tsv" else ",",
                    infer_schema_length=10000,
                    # ids stay text: "000123" must not become 123, nor a long id a float
                    schema_overrides={"object_id": pl.Utf8},
                )
            else:
                raise CaptionerError(
                    f"{path}: unsupported caption table format {suffix!r}; use .parquet or .csv"
                )
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise CaptionerError(f"{path}: cannot read the caption table ({exc})") from exc
        missing = [c for c in ("object_id", "caption") if c not in table.columns]
        if missing:
            raise CaptionerError(
                f"{path}: missing column(s) {missing}; a caption table needs object_id and "
                f"caption (found {table.columns[:10]})"
            )
        read = table.height
        table = (
            table.select(
                pl.col("object_id").cast(pl.Utf8).str.strip_chars(), pl.col("caption").cast(pl.Utf8)
            )
            .filter(pl.col("caption").is_not_null() & (pl.col("caption").str.strip_chars() != ""))
            .filter(pl.col("object_id").is_not_null() & (pl.col("object_id") != ""))
        )
        captioned = table.height
        # one caption per galaxy and model (the store keeps one): the last row of an id wins
        table = table.unique("object_id", keep="last", maintain_order=True)
        if table.height < read:
            log.warning(
                "%s: %d of %d rows not imported (%d without an object_id or caption, %d repeating "
                "an object_id: the last caption of each id is kept)",
                path,
                read - table.height,
                read,
                read - captioned,
                captioned - table.height,
            )
        name = source or path.stem
        rows = table.with_columns(
            pl.lit("import").alias("backend"),
            pl.lit(name).alias("model"),
            pl.lit("external").alias("prompt_sha"),
            pl.lit(f"import:{path.name}").alias("source"),
            pl.lit(now()).alias("created_at"),
        )
        self.add(rows)
        log.info("imported %d captions from %s as model %r", rows.height, path, name)
        return rows.height


def results_to_frames(
    results: Iterable,
    backend: str,
    model: str,
    prompt_sha: str,
    pixels: Mapping[str, str] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split CaptionResults into caption rows and failure rows; ``pixels`` (object_id ->
    what the captioner was shown) goes with each caption."""
    ok, bad = [], []
    stamp = now()
    shown = pixels or {}
    for r in results:
        if r.caption is not None and r.error is None:
            ok.append(
                {"object_id": r.object_id, "caption": r.caption, "pixels": shown.get(r.object_id)}
            )
        else:
            bad.append({"object_id": r.object_id, "reason": r.error or "no caption returned"})
    common = {"backend": backend, "model": model, "prompt_sha": prompt_sha, "created_at": stamp}
    captions = pl.DataFrame(
        [{**row, **common, "source": "generated"} for row in ok], schema=CAPTION_SCHEMA
    )
    failures = pl.DataFrame([{**row, **common} for row in bad], schema=FAILURE_SCHEMA)
    return captions, failures
