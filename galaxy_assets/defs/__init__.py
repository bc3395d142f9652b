"""The thin Dagster layer: assets, checks, resources, partitions, sensors.

Every asset body reads its inputs, calls one domain function, and returns a value plus
metadata; the logic lives in the domain packages beside this one.
"""
