"""Partitions: one dynamic partition per survey shard."""

import dagster as dg

SHARD_PARTITIONS = "survey_shards"
shard_partitions = dg.DynamicPartitionsDefinition(name=SHARD_PARTITIONS)
