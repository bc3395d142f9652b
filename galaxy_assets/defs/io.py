"""The graph's IO manager: dagster-polars' Parquet IO manager, made whole for shard batches.

Two gaps of ``PolarsParquetIOManager`` (dagster-polars 0.27) matter for per-shard assets:

* an input annotated ``DataFramePartitions`` (a dict by partition key) arrives as a bare
  frame when the run covers exactly one partition (a one-shard survey, a single-shard run);
* an output cannot cover several partitions, so an asset could not run a whole backfill in
  one run (``BackfillPolicy.single_run()``) and load its model once.

Here a dict-typed input is always a dict (empty when ``allow_missing_partitions`` finds none
of them), and an output given as a dict ``{partition_key:
frame}`` writes one file per partition, to the same paths single-partition runs use.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.storage.upath_io_manager import is_dict_type
from dagster_polars import PolarsParquetIOManager


class ShardParquetIOManager(PolarsParquetIOManager):
    """Parquet files under ``base_dir/<asset>/<partition>.parquet``; see the module doc."""

    def load_input(self, context: dg.InputContext) -> Any:
        obj = super().load_input(context)
        if obj is None and is_dict_type(context.dagster_type.typing_type):
            return {}  # allow_missing_partitions and none of them exists yet
        if (
            obj is not None
            and not isinstance(obj, dict)
            and context.has_asset_partitions
            and is_dict_type(context.dagster_type.typing_type)
        ):
            keys = list(context.asset_partition_keys)
            return {keys[0]: obj} if len(keys) == 1 else obj
        return obj

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: Any) -> None:
        """On a local disk the file is written beside ``path`` and renamed over it, so an
        interrupted or failed write never leaves a truncated Parquet file that later reads
        (another shard's duplicate-id check, a downstream asset) fail on. Object stores write
        whole objects already."""
        if getattr(path, "protocol", "") not in ("", "file", "local"):
            return super().dump_to_path(context, obj, path)
        final = Path(path.path)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
        try:
            super().dump_to_path(context, obj, type(path)(str(tmp)))
            if tmp.exists():  # an Optional output that is None writes nothing
                os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return None

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if not (isinstance(obj, dict) and context.has_asset_partitions):
            return super().handle_output(context, obj)
        paths = self._get_paths_for_partitions(context)
        missing = sorted(set(paths) - set(obj))
        if missing:
            raise dg.Failure(
                f"{context.asset_key.to_user_string()} returned no frame for partition(s) "
                f"{missing[:5]} of this run; return one frame per partition key "
                "(context.partition_keys)"
            )
        for key, path in paths.items():
            self.make_directory(path.parent)
            self.dump_to_path(context=context, obj=obj[key], path=path)
        context.add_output_metadata({"partitions_written": len(paths)})
        return None
