"""faust's delivery of fetched records to the agent, one wait per fetched batch instead of per record.

faust's consumer hands every record to the conductor inside ``Service.wait_first(callback(record),
suspend_flow.wait())``: four tasks and an ``asyncio.wait`` per record, so that a rebalance (which
suspends the flow) can interrupt a delivery that blocks. Profiled (README, "Benchmark"), that was
the largest part of faust's own cost per record. :class:`BatchDeliveryConsumer` makes the same
deliveries, record by record through the same conductor callback, with the same read-offset and
gap bookkeeping, but inside one ``wait_first`` per fetched batch: a rebalance still cancels the
delivery in progress (the records not delivered are fetched again by the next owner, as with
faust's own loop, which stops at the first record after the flow stopped). The fetch itself is
outside that wait, as in faust, and a stream record fetched while a rebalance is being completed
waits until it is (see :meth:`BatchDeliveryConsumer._deliver`).

Everything after the callback is faust's: the channel queue, the stream, ``noack_take``, acks,
the commit of acknowledged offsets. ``_drain_messages`` is a private method of faust's consumer
(pinned by tests/unit/features/test_delivery.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

YIELD_EVERY = 100
"""Records delivered between two yields to the event loop (as faust's loop)."""
REBALANCE_POLL_S = 0.01
"""How often a stream record fetched during a rebalance checks whether the rebalance completed."""


class BatchDeliveryConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer, delivering each fetched batch within one ``wait_first``."""

    async def _drain_messages(self, fetcher: Any) -> None:
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                fetched: AsyncIterator[tuple[TP, Message]] = self.getmany(timeout=1.0)
                # As faust: getmany can return at once in a loop that never yields otherwise.
                await self.sleep(0)
                if not self.should_stop:
                    # The fetch itself stays outside the wait (as in faust's loop): cancelling
                    # it would drop records the consumer thread already took from the broker.
                    records = [item async for item in fetched]
                    if records:
                        await self.wait_first(self._deliver(records), self.suspend_flow.wait())
                unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    async def _deliver(self, records: list[tuple[TP, Message]]) -> None:
        """faust's per-record body of ``_drain_messages`` (and the per-record checks of its
        ``getmany``: the flow still active, the same generation), without a wait per record.

        Records of a stream topic that arrive while a rebalance is still being completed wait
        until it is: faust's recovery resumes the stream partitions, seeks them to the committed
        offsets and then clears the channel queues (``flow_control.resume``), so a record
        delivered in between is dropped from the queue after its read offset moved on, and it is
        never fetched again when the fetch that returned it completed after the seek. (faust's
        own loop has the same race; a delivery per fetched batch made it frequent: the crash
        test's second worker lost such records.) Delivered after the clear, they are kept, and a
        copy fetched again after the seek is dropped by the read offset, as faust does."""
        callback = self.callback
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        commit_every = self._commit_every
        since_yield = 0
        for tp, message in records:
            if not self.flow_active or message.generation_id != self.app.consumer_generation_id:
                break  # a rebalance: the next owner fetches the rest again from committed offsets
            stream_record = acks_enabled_for(message.topic)  # changelogs (recovery) have no acks
            while stream_record and self.app.rebalancing:
                await asyncio.sleep(REBALANCE_POLL_S)
                if not self.flow_active or message.generation_id != self.app.consumer_generation_id:
                    return
            since_yield += 1
            if since_yield > YIELD_EVERY:
                await asyncio.sleep(0)
                since_yield = 0
            offset = message.offset
            r_offset = read_offset.get(tp)
            if r_offset is None or offset >= r_offset:
                gap = offset - (r_offset or 0)
                if gap > 1 and r_offset and stream_record:
                    await self._add_gap(tp, r_offset + 1, offset)
                if commit_every is not None and self._n_acked >= commit_every:
                    self._n_acked = 0
                    await self.commit()
                await callback(message)
                read_offset[tp] = offset


class Transport(faust_aiokafka.Transport):
    Consumer = BatchDeliveryConsumer


def use_batch_delivery(app: faust.App) -> None:
    """Make ``app`` consume with :class:`BatchDeliveryConsumer` (before the app starts)."""
    app.transport = Transport(app.conf.broker_consumer, app)
