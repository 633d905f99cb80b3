"""Long work off Blender's main thread: a plain-Python job over a list of items.

The main thread copies every input to numpy first (the worker never touches bpy: Blender's Python API is
not thread-safe). The worker calls `work(item, progress, cancel)` per item and posts messages to a queue;
the main thread drains it (a modal operator on TIMER events, or `run()` synchronously when there is no event
loop, as in background mode) and applies each result as it arrives, so finished items survive a cancel.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class Progress:
    fraction: float  # of the whole job
    text: str


@dataclass
class Done:
    label: str
    result: Any


@dataclass
class Failed:
    label: str
    message: str  # one line


@dataclass
class Finished:
    cancelled: bool


@dataclass
class Item:
    label: str  # names the item in messages (the object's name)
    inputs: Any  # numpy copies made on the main thread


def one_line(exc: Exception) -> str:
    """The first line of an error; bad-input errors (ValueError) speak for themselves, others get their type."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return first if isinstance(exc, ValueError) and first else f"{type(exc).__name__}: {first}"


class Job:
    """Runs `work(item, progress(fraction, text), cancel_event) -> result` for each item in turn. Messages
    (Progress, Done, Failed, then one Finished) arrive on `messages`. An exception fails that item only (a
    ValueError is bad input and its message is shown as is); once cancelled, the remaining items are skipped."""

    def __init__(self, items: list[Item], work: Callable):
        self.items = items
        self.work = work
        self.messages: queue.Queue = queue.Queue()
        self.cancel = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="lvd-fit", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        count = len(self.items)
        for index, item in enumerate(self.items):
            if self.cancel.is_set():
                break

            def progress(fraction: float, text: str, index=index, item=item) -> None:
                self.messages.put(Progress((index + min(max(fraction, 0.0), 1.0)) / count, f"{item.label}: {text}"))

            try:
                result = self.work(item, progress, self.cancel)
            except Exception as exc:  # noqa: BLE001 (a worker must report, not die silently)
                if self.cancel.is_set():  # however the work stopped on cancel, it is not a failure
                    break
                self.messages.put(Failed(item.label, one_line(exc)))
            else:
                self.messages.put(Done(item.label, result))
        self.messages.put(Finished(cancelled=self.cancel.is_set()))

    def drain(self) -> list:
        """Every message posted so far (main thread)."""
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out
