"""
ROS-free plumbing between the node's callbacks and its worker thread: queue and statistics.

The camera callback must never wait for the CNN, so frames go through a drop-oldest queue of
`max_batch` frames (default 1: the worker always takes the newest frame): a frame overtaken
before the worker got to it is counted as dropped (reported in diagnostics) instead of piling
up latency. With `max_batch` > 1 the worker takes every waiting frame at once
(`get_many`, vpr_ros/ros/batching.py embeds them in one forward).
"""
from collections import deque
import threading
import time
from typing import Any


class DropOldestQueue:
    """
    Bounded queue whose `put` never blocks: when full, the oldest item is dropped and counted.

    One lock + condition; `put` is O(1) so it can run in a DDS callback at camera rate.
    """

    def __init__(self, maxsize: int = 1) -> None:
        if maxsize < 1:
            raise ValueError(f'maxsize must be >= 1, got {maxsize}')
        self.maxsize = maxsize
        self._items: deque = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0

    def put(self, item: Any) -> bool:
        """Enqueue; return True when an older item had to be dropped to make room."""
        with self._cond:
            dropped = False
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self.dropped += 1
                dropped = True
            self._items.append(item)
            self._cond.notify()
            return dropped

    def get(self, timeout: float | None = None) -> Any:
        """Oldest item, or None after `timeout` seconds or once closed and empty."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if self._items:
                return self._items.popleft()
            return None

    def get_many(self, n: int, timeout: float | None = None) -> list:
        """
        Up to `n` items, oldest first, waiting up to `timeout` for the first; [] if none.

        Items beyond `n` stay queued (the next call takes them), so nothing is lost here: only
        `put` drops, and counts what it drops.
        """
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            return [self._items.popleft() for _ in range(min(max(1, n), len(self._items)))]

    def resize(self, maxsize: int) -> int:
        """Hold at most `maxsize` items from now on; drop (and count) the oldest beyond it."""
        if maxsize < 1:
            raise ValueError(f'maxsize must be >= 1, got {maxsize}')
        with self._cond:
            self.maxsize = maxsize
            n = 0
            while len(self._items) > maxsize:
                self._items.popleft()
                n += 1
            self.dropped += n
            return n

    def clear(self) -> int:
        """Drop everything queued (counted as dropped); return how many."""
        with self._cond:
            n = len(self._items)
            self._items.clear()
            self.dropped += n
            return n

    def close(self) -> None:
        """Wake the consumer for good, so a worker blocked in `get` can exit."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class RollingStats:
    """The last `window` samples of a quantity, for the p50/p95 the diagnostics report."""

    def __init__(self, window: int = 500) -> None:
        self._samples: deque = deque(maxlen=window)
        self._lock = threading.Lock()
        self.count = 0

    def add(self, value: float) -> None:
        with self._lock:
            self._samples.append(float(value))
            self.count += 1

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile (q in [0, 100]) of the window; NaN when empty."""
        with self._lock:
            data = sorted(self._samples)
        if not data:
            return float('nan')
        k = min(len(data) - 1, max(0, int(round(q / 100.0 * (len(data) - 1)))))
        return data[k]

    def clear(self) -> None:
        with self._lock:
            self._samples.clear()


class RateMeter:
    """Events per second over a sliding window, from monotonic arrival times."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._times: deque = deque()
        self._lock = threading.Lock()
        self._start = time.monotonic()

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._times.append(now)
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()

    def rate(self, now: float | None = None) -> float:
        """Events in the window / the window (shorter just after start, so no ramp-up)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            span = min(self.window_s, now - self._start)
            return len(self._times) / span if span > 0 else 0.0
