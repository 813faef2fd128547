"""
What vpr_node reports on /diagnostics, and the bad-input counters behind it.

Per-kind bad-input counters, frame counters, rates and latencies, and one status (OK, or WARN
with the reasons) that a robot's diagnostic aggregator reads.

Bad input never stops the node; it is counted here, per kind, and warned about with throttling
(one line per kind every THROTTLE_S, with the count so far), so a broken camera driver shows up
as a rising counter and a few log lines, not as a flood.
"""
from collections import deque
import threading
import time

BAD_INPUT_KEYS = ('bad_encoding', 'bad_image_data', 'bad_pose', 'pose_out_of_order',
                  'pose_time_reset', 'pose_outlier', 'image_stamp_backwards', 'no_pose',
                  'processing_errors', 'image_stamp_duplicate',
                  'image_stamp_implausible')  # core/stamp_gate.py
THROTTLE_S = 5.0
STATUS_NAME = 'vpr_node: place recognition'


class Counters:
    """Bad-input counters by kind (thread-safe) and the frame counters of the node."""

    def __init__(self, keys: tuple[str, ...] = BAD_INPUT_KEYS,
                 throttle_s: float = THROTTLE_S) -> None:
        self._lock = threading.Lock()
        self._bad = {k: 0 for k in keys}
        self._last_warn: dict[str, float] = {}
        self._throttle_s = throttle_s
        self.received = 0   # image callback only
        self.paused = 0     # image callback only
        self.processed = 0  # worker only
        self.matches = 0    # worker only

    def count(self, key: str) -> tuple[int, bool]:
        """Count one bad input of `key`; return (count so far, whether to warn now)."""
        now = time.monotonic()
        with self._lock:
            self._bad[key] = self._bad.get(key, 0) + 1
            last = self._last_warn.get(key)
            warn = last is None or now - last >= self._throttle_s
            if warn:
                self._last_warn[key] = now
            return self._bad[key], warn

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            out = dict(self._bad)
        out.update(frames_received=self.received, frames_processed=self.processed,
                   frames_paused=self.paused, matches_published=self.matches)
        return out


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


class FrameTimes:
    """Input and processing rates, and latency percentiles of the last frames."""

    def __init__(self, window: int = 500, rate_window_s: float = 5.0) -> None:
        self.input_rate = RateMeter(rate_window_s)
        self.processed_rate = RateMeter(rate_window_s)
        self.latency = RollingStats(window)   # receive -> published (queue + convert + core)
        self.core = RollingStats(window)      # LoopDetector.process
        self.callback = RollingStats(window)  # image callback duration

    def values(self, now: float | None = None) -> dict[str, str]:
        now = time.monotonic() if now is None else now

        def ms(stats: RollingStats, q: float) -> str:
            return f'{stats.percentile(q) * 1e3:.2f}'

        return {
            'input_rate_hz': f'{self.input_rate.rate(now):.2f}',
            'processed_rate_hz': f'{self.processed_rate.rate(now):.2f}',
            'latency_p50_ms': ms(self.latency, 50), 'latency_p95_ms': ms(self.latency, 95),
            'core_p50_ms': ms(self.core, 50), 'core_p95_ms': ms(self.core, 95),
            'callback_p95_ms': ms(self.callback, 95),
        }


def diagnostics_message(hardware_id: str, problems: list[str], values: dict, stamp,
                        errors: list[str] | None = None):
    """
    Build a DiagnosticArray with one status: ERROR, WARN or OK 'running'.

    ERROR names the errors, else WARN the problems. An error is something the node cannot do
    (save the map), a problem something its input lacks (a silent pose topic).
    """
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    status = DiagnosticStatus(name=STATUS_NAME, hardware_id=hardware_id)
    if errors:
        status.level = DiagnosticStatus.ERROR
    else:
        status.level = DiagnosticStatus.WARN if problems else DiagnosticStatus.OK
    status.message = '; '.join(list(errors or []) + problems) or 'running'
    status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
    arr = DiagnosticArray(status=[status])
    arr.header.stamp = stamp
    return arr


def gate_counters(detector) -> dict[str, int]:
    """Degenerate-frame counts for /diagnostics: total and per reason."""
    out = {'degenerate_frames': int(detector.counters.get('degenerate', 0))}
    for key, n in sorted(getattr(detector, 'degenerate_reasons', {}).items()):
        out[f'degenerate_{key}'] = int(n)
    return out
