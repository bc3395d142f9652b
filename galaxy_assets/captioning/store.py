"""The caption store: every caption ever made or imported, keyed by (object_id, backend, model,
prompt_sha).

A Parquet file in the home folder, rewritten atomically on each append, so reruns caption only
galaxies with no caption for the same (backend, model, prompt_sha), and changing the backend,
the model or the prompt recaptions. Failures go to a separate table with their reason; a failed
galaxy has no caption.

Several processes may use one store at once (``captions_job`` while ``galaxy-assets
import-captions`` runs): every read-merge-write holds an exclusive lock on ``.store.lock`` in
the store folder, and a read opens the file once, so it sees one whole version of it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
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
}
FAILURE_SCHEMA: dict[str, pl.DataType] = {
    "object_id": pl.Utf8(),
    "backend": pl.Utf8(),
    "model": pl.Utf8(),
    "prompt_sha": pl.Utf8(),
    "reason": pl.Utf8(),
    "created_at": pl.Datetime("us", "UTC"),
}
# one caption per galaxy, backend, model and prompt: the same model name under another backend
# (a local transformers folder and an endpoint serving that name) is another captioner
KEY = ["object_id", "backend", "model", "prompt_sha"]
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
    """The table at ``path`` (empty, in ``schema``, when there is none).

    The file is opened once and read from that handle: given a path, polars opens it twice
    (the footer, then the pages), and a writer's ``os.replace`` between the two opens made it
    read one version's footer with another's pages ("parquet: File out of specification").
    An open handle keeps the version it opened, whatever replaces the path meanwhile.
    """
    try:
        with open(path, "rb") as handle:
            return pl.read_parquet(handle)
    except FileNotFoundError:
        return pl.DataFrame(schema=schema)


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
        self, object_ids: Sequence[str], model: str, prompt_sha: str, backend: str | None = None
    ) -> list[str]:
        """The ids with no caption for (model, prompt_sha) — and ``backend`` when given —, in
        the given order."""
        have = self.captions().filter(
            (pl.col("model") == model)
            & (pl.col("prompt_sha") == prompt_sha)
            & (pl.lit(True) if backend is None else pl.col("backend") == backend)
        )["object_id"]
        done = set(have.to_list())
        return [oid for oid in object_ids if oid not in done]

    def add(self, captions: pl.DataFrame | None, failures: pl.DataFrame | None = None) -> None:
        """Upsert captions on (object_id, backend, model, prompt_sha); record failures.

        A galaxy that now has a caption loses its earlier failure rows for the same key, and a
        galaxy that failed again keeps only its latest failure (a rerun retries failures).
        Holds the store's lock from the reads it merges with to the last write, so that
        concurrent writers (two processes) add to each other instead of overwriting.
        """
        if captions is None:
            captions = pl.DataFrame(schema=CAPTION_SCHEMA)
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
            old_failures = old_failures.join(captions.select(KEY), on=KEY, how="anti")
        if failures is not None and failures.height:
            failures = failures.select(list(FAILURE_SCHEMA)).cast(FAILURE_SCHEMA)
            if old_failures.height:
                old_failures = old_failures.join(failures.select(KEY), on=KEY, how="anti")
            latest = failures.unique(subset=KEY, keep="last", maintain_order=True)
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
    results: Iterable, backend: str, model: str, prompt_sha: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split CaptionResults into caption rows and failure rows."""
    ok, bad = [], []
    stamp = now()
    for r in results:
        if r.caption is not None and r.error is None:
            ok.append({"object_id": r.object_id, "caption": r.caption})
        else:
            bad.append({"object_id": r.object_id, "reason": r.error or "no caption returned"})
    common = {"backend": backend, "model": model, "prompt_sha": prompt_sha, "created_at": stamp}
    captions = pl.DataFrame(
        [{**row, **common, "source": "generated"} for row in ok], schema=CAPTION_SCHEMA
    )
    failures = pl.DataFrame([{**row, **common} for row in bad], schema=FAILURE_SCHEMA)
    return captions, failures
