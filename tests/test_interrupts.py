"""The Ctrl-C-safe building blocks of decoding and encoding (pipeline/media/interrupts.py); the end-to-end check that
SIGINT at random moments leaves nothing behind is in tests/test_encode.py."""
from __future__ import annotations

import signal
import threading
import time

import pytest

from pipeline.media.interrupts import POLL_SECONDS, Handoff, interrupts_deferred


def test_handoff_keeps_order_and_blocks_when_full():
    handoff = Handoff(2)
    assert handoff.put(1) and handoff.put(2)
    blocked = threading.Thread(target=handoff.put, args=(3,), daemon=True)
    blocked.start()
    blocked.join(timeout=5 * POLL_SECONDS)
    assert blocked.is_alive()  # no free slot: the third put waits
    assert handoff.get() == 1  # ... until one is taken
    blocked.join(timeout=5)
    assert not blocked.is_alive()
    assert [handoff.get(), handoff.get()] == [2, 3]


def test_closing_releases_a_waiting_put_and_get():
    full, empty = Handoff(1), Handoff(1)
    full.put("x")
    results = {}
    threads = [threading.Thread(target=lambda: results.update(put=full.put("y")), daemon=True),
               threading.Thread(target=lambda: results.update(get=_get_or_closed(empty)), daemon=True)]
    for thread in threads:
        thread.start()
    time.sleep(3 * POLL_SECONDS)
    full.close()
    empty.close()
    for thread in threads:
        thread.join(timeout=5)
        assert not thread.is_alive()
    assert results == {"put": False, "get": "closed"}
    assert full.get() == "x"  # what was handed over before closing can still be taken
    with pytest.raises(Handoff.Closed):
        full.get()


def _get_or_closed(handoff: Handoff):
    try:
        return handoff.get()
    except Handoff.Closed:
        return "closed"


def test_a_deferred_sigint_arrives_after_the_block_and_only_then():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, also in a background job
    try:
        finished = False
        with pytest.raises(KeyboardInterrupt):
            with interrupts_deferred():
                signal.raise_signal(signal.SIGINT)
                time.sleep(0.05)  # a pending signal would be handled here, were it not held back
                finished = True
        assert finished
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_deferred_sigint_that_was_ignored_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts_deferred():
            signal.raise_signal(signal.SIGINT)
        time.sleep(0.05)  # nothing is raised here either
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
