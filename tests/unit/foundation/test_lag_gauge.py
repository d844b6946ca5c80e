"""The lag gauge follows the assignment: high watermark minus next offset, revoked partitions removed."""

from __future__ import annotations

from prometheus_client import REGISTRY

from driftline.lag import LagGauge


def value(group: str, topic: str, partition: int) -> float | None:
    return REGISTRY.get_sample_value(
        "driftline_consumer_lag", {"group": group, "topic": topic, "partition": str(partition)}
    )


async def test_lag_per_partition_and_revoked_partitions_disappear() -> None:
    gauge = LagGauge("unit-lag")
    highwaters = {("t", 0): 120, ("t", 1): 7, ("t", 2): None}
    next_offsets = {("t", 0): 100, ("t", 1): 7, ("t", 2): 0}

    async def done(topic: str, partition: int) -> int | None:
        return next_offsets[(topic, partition)]

    got = await gauge.update(highwaters, lambda t, p: highwaters[(t, p)], done)
    assert got == {("t", 0): 20, ("t", 1): 0}  # partition 2: nothing fetched yet, no series
    assert value("unit-lag", "t", 0) == 20 and value("unit-lag", "t", 1) == 0
    assert value("unit-lag", "t", 2) is None

    await gauge.update([("t", 1)], lambda t, p: highwaters[(t, p)], done)  # partition 0 revoked
    assert value("unit-lag", "t", 0) is None and value("unit-lag", "t", 1) == 0
    gauge.clear()
    assert value("unit-lag", "t", 1) is None
