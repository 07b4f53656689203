"""Garbage-collector settings for the controller process.

The controller holds a large, long-lived desired state (every template version in the stream)
and allocates many short-lived objects per event (decoded events, rendered objects). With
CPython's default thresholds (700 allocations) young collections run every few events and
full collections keep re-walking the whole state: about a quarter of the CPU cost of an event
on this project's benchmark (`bench/controller.py`). Larger young generations and freezing the
state once it is rebuilt keep the collector for what is actually garbage.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 100_000  # allocations between young collections (CPython's default: 700)
MIDDLE_THRESHOLD = 20  # young collections per middle collection (default: 10)
OLD_THRESHOLD = 10  # middle collections per full collection (the default: cycles that grow old are still found)


def tune_garbage_collection() -> None:
    """Fewer, larger collections: call once at process start."""
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)


def freeze_long_lived() -> None:
    """After the state is rebuilt: collect once, then keep every surviving object out of later collections.

    Frozen objects are still freed when their last reference goes (reference counting); only
    reference cycles among them would wait, and the state holds none.
    """
    gc.collect()
    gc.freeze()
