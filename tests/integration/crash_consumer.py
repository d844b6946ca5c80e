"""A minimal consumer process for the crash test: a ConsumerRunner whose handler writes to an
idempotent sink (PK = event_id) and logs every delivery, and can be told to hang after its write
and before the commit, so the test can SIGKILL it at exactly that point.

    python -m tests.integration.crash_consumer <group> <hang-on-event-id | ->
"""

from __future__ import annotations

import asyncio
import sys

from driftline import db
from driftline.catalog import LABELS
from driftline.consumer import ConsumerRunner
from driftline.events import Event
from driftline.producer import EventProducer
from driftline.serde import AvroSerde, SchemaRegistryClient
from driftline.settings import StackSettings

SCHEMA = "crashtest"


async def main(group: str, hang_on: str) -> None:
    stack = StackSettings()
    pool = await db.create_pool(stack.postgres_dsn.get_secret_value(), SCHEMA)
    async with pool.acquire() as conn:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS sink (event_id text PRIMARY KEY, label text NOT NULL);"
            "CREATE TABLE IF NOT EXISTS deliveries (event_id text NOT NULL, at timestamptz DEFAULT now());"
        )
    registry = SchemaRegistryClient.from_settings(stack)
    serde = AvroSerde(registry, topic_prefix=stack.topic_prefix)
    producer = EventProducer(stack.kafka, serde, "crash-consumer")
    await producer.start()

    async def handle(event: Event) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO deliveries (event_id) VALUES ($1)", event.event_id)
            await conn.execute(
                "INSERT INTO sink (event_id, label) VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING",
                event.event_id,
                str(event.record.label),
            )
        if event.event_id == hang_on:
            print("HANGING", flush=True)
            await asyncio.sleep(3600)  # the effect is durable, the offset is not committed

    runner = ConsumerRunner(
        group_id=group,
        topics=[LABELS],
        kafka=stack.kafka,
        serde=serde,
        producer=producer,
        handler=handle,
        max_records=1,
    )
    await runner.run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
