"""Ctrl-C (KeyboardInterrupt) at any moment of decoding and encoding: no hang, no process or file left behind.

Python raises KeyboardInterrupt in the main thread between any two bytecodes. Two kinds of code cannot take that:

1. Python-level locks, so `queue.Queue` (a `threading.Condition` around a lock), `threading.Event` and the
   executors: an interrupt right after the lock's acquire and before the `with` block that releases it leaves the lock
   held for good, and the next `put`, `get` or `qsize` from any thread blocks forever. Measured here: about one hang
   in 30 renders interrupted with SIGINT (tests/test_demo.py's Ctrl-C test hung in CI that way; py-spy showed the
   main thread and the encoder's pump both waiting on the queue's mutex).
   `Handoff` replaces `queue.Queue` between the main thread and one helper thread. It is built only from
   `queue.SimpleQueue`, whose `put` and `get` are single C calls: an interrupt lands before or after them, never inside
   with a lock held. Capacity is a second SimpleQueue of free slots; an interrupt between the two calls of `put` or
   `get` at most loses a slot, which only matters while the hand-off keeps being used, and an interrupted side stops
   using it. Ending is a flag read by polling (`closed`), not a marker that has to get through.
2. Starting a child process or a thread: an interrupt inside `subprocess.Popen` after the fork loses the Popen object
   while the child runs on (an ffmpeg encoder started that way finalised its partial output file when its stdin
   closed, after the caller had cleaned up: once in 1,500 interrupted encodes), and one inside `Thread.start()` can
   leave the new thread unable to start. `interrupts_deferred` holds SIGINT back for such short steps (and for the
   probe's few frame seeks, which run on an executor: `frames_at` in pipeline/media/decode.py).
"""
from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

POLL_SECONDS = 0.05  # how often a waiting side looks at `closed`: the longest a shutdown waits for a blocked thread


class Handoff:
    """A FIFO of at most `capacity` items. `put` and `get` block, waking every POLL_SECONDS to check `closed`;
    once `close()` was called they return False / raise `Closed` instead of waiting on."""

    class Closed(Exception):
        """The other side closed the hand-off."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._items: queue.SimpleQueue = queue.SimpleQueue()
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(capacity):
            self._free.put(None)
        self.closed = False  # a plain attribute: setting it takes no lock

    def close(self) -> None:
        """Make every waiting and later put/get give up; items not taken yet are dropped."""
        self.closed = True

    def put(self, item: Any) -> bool:
        """Hand over `item`, waiting for a free slot; False (item not handed over) when closed meanwhile."""
        while not self.closed:
            try:
                self._free.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            self._items.put(item)
            return True
        return False

    def get(self) -> Any:
        """The next item, waiting for one; raises Handoff.Closed when closed and nothing is left to take."""
        while True:
            try:
                item = self._items.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if self.closed:
                    raise Handoff.Closed from None
                continue
            self._free.put(None)
            return item


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold back SIGINT while the body runs (in the main thread; elsewhere no signal arrives anyway), then deliver it
    with the handler that was in place, so it acts exactly as it would have: KeyboardInterrupt, ignored, or fatal."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            signal.raise_signal(signal.SIGINT)
