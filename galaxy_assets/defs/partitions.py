"""Partitions: one dynamic partition per survey shard."""

import dagster as dg

SHARD_PARTITIONS = "survey_shards"
shard_partitions = dg.DynamicPartitionsDefinition(name=SHARD_PARTITIONS)


def contiguous_ranges(
    instance: dg.DagsterInstance, keys: list[str], max_keys: int = 0
) -> list[tuple[str, str]]:
    """``keys`` as (first, last) runs of consecutive survey_shards partitions: a partition
    range covers every partition between its ends, so shards left out (a failed one) split
    the range. ``max_keys`` > 0: no range holds more shards than that."""
    wanted = set(keys)
    ranges: list[tuple[str, str]] = []
    start = prev = None
    n = 0
    for key in instance.get_dynamic_partitions(shard_partitions.name):
        if key in wanted:
            if start is not None and max_keys > 0 and n >= max_keys:
                ranges.append((start, prev))
                start = None
            if start is None:
                start, n = key, 0
            prev = key
            n += 1
        elif start is not None:
            ranges.append((start, prev))
            start = None
    if start is not None:
        ranges.append((start, prev))
    return ranges
