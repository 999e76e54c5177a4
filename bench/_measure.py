"""Side-by-side timing, exact peak-tensor-memory and dispatch-count helpers for the benchmarks."""
from __future__ import annotations

import collections
import statistics
import time
from typing import Callable


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1,
                      clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median seconds per call, variants interleaved so machine noise hits them alike.

    Pass ``clock=time.process_time`` for CPU seconds of this process (all its threads),
    which other jobs on a shared machine disturb far less than wall time.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = clock()
            fn()
            samples[name].append(clock() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


class LiveTensorBytes:
    """Exact peak of live tensor storage during a call, counted by a torch dispatch mode.

    RSS peaks on CPU move by tens of MB with the allocator's state; this counts only the
    bytes of tensors alive at once (inputs and weights already alive are the baseline), so
    two variants compare exactly. Views share their base's storage and are not recounted.
    """

    def __init__(self) -> None:
        self.live: dict[int, list[int]] = {}  # storage ptr -> [nbytes, referencing tensors]
        self.current = 0
        self.peak = 0

    def _track(self, t) -> None:
        import weakref

        import torch

        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr in self.live:
            self.live[ptr][1] += 1
        else:
            self.live[ptr] = [st.nbytes(), 1]
            self.current += st.nbytes()
            self.peak = max(self.peak, self.current)
        weakref.finalize(t, self._release, ptr)

    def _release(self, ptr: int) -> None:
        entry = self.live.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[ptr]

    def measure(self, fn: Callable[[], object]) -> int:
        """Peak bytes of tensors created by ``fn`` (its result freed at the end)."""
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                inputs = [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
                outside = {a.untyped_storage().data_ptr() for a in inputs} - set(tracker.live)
                for t in tree_leaves(out):
                    # views and in-place results on memory that existed before the call are not new
                    if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in outside:
                        tracker._track(t)
                return out

        self.live.clear()
        self.current = self.peak = 0
        with Mode():
            result = fn()
        del result
        return self.peak


def mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def count_dispatches(fn: Callable[[], object]) -> collections.Counter:
    """Aten operations ``fn`` dispatches, by name (views and in-place ops included).

    On a GPU each one is at least a kernel launch or dispatcher round trip (~5-10 µs), so the
    count is what a CPU timing cannot show.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    counts: collections.Counter = collections.Counter()

    class Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            counts[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    with Mode():
        fn()
    return counts
