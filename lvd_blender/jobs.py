"""Long work off Blender's main thread: a plain-Python job over a list of items.

The main thread copies every input to numpy first (the work never touches bpy). The job calls
`work(group, progress, cancel)` per group of items (one item each, or several to fit together on a GPU) and
posts messages; Fit runs it in the fitting process (lvd_blender.worker), which relays them. The main thread
drains them (a modal operator on TIMER events, or `run()` synchronously when there is no event loop, as in
background mode) and applies each result as it arrives, so finished items survive a cancel.
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
    """Runs `work(group, progress(fraction, text), cancel_event) -> [result or Exception per item]` for each
    group of `group_size` items in turn. Messages (Progress, Done, Failed, then one Finished) arrive on
    `messages`. An Exception in the results fails that item only, one raised fails the group (a ValueError is
    bad input and its message is shown as is); once cancelled, the remaining groups are skipped. `post`
    replaces the queue (the fitting process relays each message as it comes)."""

    def __init__(self, items: list[Item], work: Callable, group_size: int = 1, post: Callable | None = None):
        self.items = items
        self.work = work
        self.group_size = max(1, group_size)
        self.messages: queue.Queue = queue.Queue()
        self.post = post or self.messages.put
        self.cancel = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="lvd-fit", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def stop(self) -> None:
        """Cancel: the work stops at its next progress report; finished items stay."""
        self.cancel.set()

    def run(self) -> None:
        count = len(self.items)
        for first in range(0, count, self.group_size):
            if self.cancel.is_set():
                break
            group = self.items[first : first + self.group_size]
            label = group[0].label if len(group) == 1 else f"{group[0].label} and {len(group) - 1} more"

            def progress(fraction: float, text: str, first=first, size=len(group), label=label) -> None:
                self.post(Progress((first + min(max(fraction, 0.0), 1.0) * size) / count, f"{label}: {text}"))

            try:
                results = self.work(group, progress, self.cancel)
            except Exception as exc:  # noqa: BLE001 (a worker must report, not die silently)
                if self.cancel.is_set():  # however the work stopped on cancel, it is not a failure
                    break
                results = [exc] * len(group)
            for item, result in zip(group, results):
                self.post(Failed(item.label, one_line(result)) if isinstance(result, Exception) else Done(item.label, result))
        self.post(Finished(cancelled=self.cancel.is_set()))

    def drain(self) -> list:
        """Every message posted so far (main thread)."""
        return drain(self.messages)


def drain(messages: queue.Queue) -> list:
    """Every message in the queue, taken out, without waiting."""
    out = []
    while True:
        try:
            out.append(messages.get_nowait())
        except queue.Empty:
            return out
