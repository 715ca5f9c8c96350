"""Task events to containerd: one ordered queue, sent by one task through ttrpc ``Events/Forward``.

``publish`` never blocks: it stamps the event and queues it. The sender retries a failed Forward
(containerd may be restarting) with growing pauses and reconnects; events keep their order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from google.protobuf import empty_pb2, timestamp_pb2
from google.protobuf.message import Message

from pyoci.protos import containerd_events_ttrpc_pb2 as events_pb2
from pyoci.protos import typeurl
from pyoci.ttrpc import TtrpcError
from pyoci.ttrpc.client import Client

log = logging.getLogger("pyoci.shim")
FORWARD = events_pb2.DESCRIPTOR.services_by_name["Events"]
MAX_QUEUE = 2048
ATTEMPTS = 5


def timestamp(at: float | None = None) -> timestamp_pb2.Timestamp:
    ns = time.time_ns() if at is None else int(at * 1e9)
    return timestamp_pb2.Timestamp(seconds=ns // 10**9, nanos=ns % 10**9)


class Publisher:
    def __init__(self, address: str, namespace: str) -> None:
        self.address = address.removeprefix("unix://")
        self.namespace = namespace
        self._queue: asyncio.Queue[events_pb2.ForwardRequest] = asyncio.Queue(MAX_QUEUE)
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-publisher")

    def publish(self, topic: str, event: Message) -> None:
        request = events_pb2.ForwardRequest(
            envelope=events_pb2.Envelope(
                timestamp=timestamp(), namespace=self.namespace, topic=topic, event=typeurl.pack(event)
            )
        )
        try:
            self._queue.put_nowait(request)
        except asyncio.QueueFull:
            log.error("event queue full: dropping %s", topic)

    async def _run(self) -> None:
        while True:
            request = await self._queue.get()
            await self._send(request)
            self._queue.task_done()

    async def _send(self, request: events_pb2.ForwardRequest) -> None:
        topic = request.envelope.topic
        for attempt in range(1, ATTEMPTS + 1):
            try:
                if self._client is None or self._client.closed:
                    self._client = await Client.connect(self.address)
                await self._client.call(
                    FORWARD.full_name,
                    "Forward",
                    request,
                    empty_pb2.Empty,
                    timeout=5,
                    metadata={"containerd-namespace-ttrpc": self.namespace},
                )
                return
            except TtrpcError as exc:
                log.warning("publish %s (attempt %d): %s", topic, attempt, exc)
                if self._client is not None:
                    await self._client.close()
                    self._client = None
                await asyncio.sleep(attempt * 0.5)
        log.error("publish %s: giving up after %d attempts", topic, ATTEMPTS)

    async def close(self, drain_timeout: float = 5.0) -> None:
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout):
                await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._client is not None:
            await self._client.close()
