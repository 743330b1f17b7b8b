"""Admission: at most ``max_concurrent`` requests decode at once, at most ``max_queue`` wait for a
turn, and one more is told to come back later (429 with ``Retry-After``).

On the in-process engine decodes share one model and take turns per commit, so the server runs
one request at a time by default and queues the rest; on a vLLM server they run side by side up to
``max_concurrent``. A request keeps its slot until its last decode has stopped, also when the
client left first (a decode in a worker thread stops before its next model call, and only then
frees the model). Everything here runs on the server's event loop."""

from __future__ import annotations

import asyncio
import collections
import math
import time

from .errors import APIError

__all__ = ["Admission", "Ticket"]


class Ticket:
    """A request's place: waiting, then holding a slot. The slot is freed when every holder (the
    request, and each decode it started) has let go."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._holders = 1
        self.granted = False
        self.since = time.monotonic()
        self.future: asyncio.Future[None] | None = None

    def hold(self) -> None:
        self._holders += 1

    def drop(self) -> None:
        self._holders -= 1
        if self._holders == 0:
            self._admission._leave(self)


class Admission:
    def __init__(self, max_concurrent: int, max_queue: int) -> None:
        if max_concurrent < 1:
            raise ValueError(f"--max-concurrent must be at least 1, got {max_concurrent}")
        if max_queue < 0:
            raise ValueError(f"--max-queue must be 0 or more, got {max_queue}")
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.running = 0
        self._waiting: collections.deque[tuple[Ticket, asyncio.Future[None]]] = collections.deque()
        self._seconds = 5.0  # a running mean of how long a request holds its slot (for Retry-After)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the requests ahead, at the recent time per request."""
        ahead = self.waiting + 1
        return max(1, min(600, math.ceil(self._seconds * ahead / self.max_concurrent)))

    def enter(self) -> Ticket:
        """A ticket, granted at once when a slot is free, else queued; a 429 when the queue is full."""
        ticket = Ticket(self)
        if self.running < self.max_concurrent and not self._waiting:
            self.running += 1
            ticket.granted = True
            ticket.since = time.monotonic()
            return ticket
        if len(self._waiting) >= self.max_queue:
            wait = self.retry_after()
            raise APIError(
                429,
                f"the server is busy: {self.running} request(s) decoding and {self.waiting} waiting (the most it "
                f"queues); retry in about {wait} s",
                code="queue_full",
                headers={"Retry-After": str(wait)},
            )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((ticket, future))
        ticket.future = future
        return ticket

    async def wait(self, ticket: Ticket) -> None:
        """Wait for ``ticket``'s slot; cancelled (the client left), it leaves the queue."""
        future = ticket.future
        if ticket.granted or future is None:
            return
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted just as it was cancelled
                ticket.granted = True
            else:
                self._remove(ticket)
            raise

    def _remove(self, ticket: Ticket) -> None:
        for i, (queued, _) in enumerate(self._waiting):
            if queued is ticket:
                del self._waiting[i]
                return

    def _leave(self, ticket: Ticket) -> None:
        if not ticket.granted:
            self._remove(ticket)
            return
        held = time.monotonic() - ticket.since
        self._seconds = 0.8 * self._seconds + 0.2 * held
        while self._waiting:
            nxt, future = self._waiting.popleft()
            if not future.done():
                nxt.granted = True
                nxt.since = time.monotonic()
                future.set_result(None)
                return
        self.running -= 1
