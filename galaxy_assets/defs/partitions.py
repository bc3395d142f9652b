"""Partitions: one dynamic partition per survey shard."""

import dagster as dg

SHARD_PARTITIONS = "survey_shards"
shard_partitions = dg.DynamicPartitionsDefinition(name=SHARD_PARTITIONS)


def contiguous_ranges(instance: dg.DagsterInstance, keys: list[str]) -> list[tuple[str, str]]:
    """``keys`` as (first, last) runs of consecutive survey_shards partitions: a partition
    range covers every partition between its ends, so shards left out (a failed one) split
    the range."""
    wanted = set(keys)
    ranges: list[tuple[str, str]] = []
    start = prev = None
    for key in instance.get_dynamic_partitions(shard_partitions.name):
        if key in wanted:
            start = start or key
            prev = key
        elif start is not None:
            ranges.append((start, prev))
            start = None
    if start is not None:
        ranges.append((start, prev))
    return ranges
