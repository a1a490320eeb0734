"""Overlapping stages: a producer in a thread, at most a few items ahead of its consumer.

Also a call started in the background whose result is collected later (in_background)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def prefetch(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """Produce *items* in a background thread, at most *depth* ahead of the consumer.

    Exceptions from the producer are re-raised in the consumer; closing the returned iterator early
    stops the producer (and closes it, so a decoder it owns is stopped).
    """
    slots: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        slots.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
        except BaseException as exc:  # handed to the consumer
            _put_final(slots, ("error", exc), stop)
        else:
            _put_final(slots, ("end", None), stop)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
        thread.join()


def _put_final(slots: queue.Queue, message: tuple[str, Any], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            slots.put(message, timeout=0.1)
            return
        except queue.Full:
            continue


def in_background(call: Callable[[], T], name: str = "background") -> Callable[[], T]:
    """Start *call* in a thread now; the returned function waits for it and returns its result (or raises
    what it raised)."""
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # handed to whoever collects the result
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()

    def result() -> T:
        thread.join()
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    return result
