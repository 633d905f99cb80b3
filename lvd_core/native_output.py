"""Silence what native libraries (mediapipe's TensorFlow Lite and absl logs, Blender's exporters) print straight
to the process's stdout / stderr file descriptors, below Python's sys.stdout and logging."""

from __future__ import annotations

import contextlib
import os
import sys

STDOUT, STDERR = 1, 2


@contextlib.contextmanager
def silenced(*descriptors: int):
    """Within the block, writes to the given file descriptors (default: stderr) go to os.devnull. Errors still
    raise; a command line tool's own messages stay readable."""
    descriptors = descriptors or (STDERR,)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(descriptor) for descriptor in descriptors]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for descriptor in descriptors:
            os.dup2(devnull, descriptor)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for descriptor, copy in zip(descriptors, saved):
            os.dup2(copy, descriptor)
        for descriptor in (*saved, devnull):
            os.close(descriptor)
