"""
The query's pace against the map's: which speed ratio aligns a pose-less history.

Without poses a history is aligned with the map by time (vpr_ros/core/sequence.py), at a few
speed ratios, because a place may be revisited faster or slower than it was mapped. Taking the
best of the ratios frame by frame is biased towards the wrong ones: where the last metres look
alike, a history stretched by 0.8 fits the keyframe a second off about as well as the right one
at 1.0, and those near-misses (1-2 m from the place, false by psi) set the calibrated margin.

The ratio is a property of the traverse, not of one frame: a robot revisits at much the same
pace for many seconds. So the pace is learnt: each frame adds, for its best-supported
candidate, how much better every ratio fitted than the best one (a running mean over about
`tau_s` seconds), and the ratio that has fitted best lately is preferred: an alignment at ratio
`v` loses `prior * |ln(v / v_hat)| / ln 1.25` of its score, so another ratio must fit better by
`prior` to win a frame. Before any evidence `v_hat` is 1.0 (the same pace).
"""
import math

import numpy as np

#: Speed ratios a pose-less history is aligned at (query speed over the map's).
SPEEDS_TIME = (0.8, 1.0, 1.25)
_STEP = math.log(1.25)


class Pace:
    """Running evidence for each speed ratio, and the penalty it puts on the others."""

    def __init__(self, prior: float, tau_s: float, speeds=SPEEDS_TIME) -> None:
        self.prior = float(prior)
        self.tau_s = float(tau_s)
        self.speeds = np.asarray(speeds, float)
        self.reset()

    def reset(self) -> None:
        """No evidence: the same pace as the map (1.0) until frames say otherwise."""
        # ties go to the ratio nearest 1.0
        self._evidence = -1e-6 * np.abs(np.log(self.speeds))
        self._last_s: float | None = None

    @property
    def ratio(self) -> float:
        """The speed ratio that has fitted best lately (v_hat)."""
        return float(self.speeds[int(np.argmax(self._evidence))])

    def penalty(self) -> np.ndarray:
        """Score each ratio's alignment loses: `prior` per step of 1.25 away from v_hat."""
        return self.prior * np.abs(np.log(self.speeds / self.ratio)) / _STEP

    def update(self, per_speed: np.ndarray, t_s: float) -> None:
        """Add one frame: the best candidate's mean similarity per ratio (NaN: not aligned)."""
        row = np.asarray(per_speed, float)
        if row.shape != self.speeds.shape or not np.all(np.isfinite(row)):
            return  # a ratio the track could not align says nothing about the pace
        dt = self.tau_s if self._last_s is None else max(t_s - self._last_s, 0.0)
        self._last_s = t_s
        w = 1.0 - math.exp(-dt / self.tau_s) if self.tau_s > 0 else 1.0
        self._evidence = (1.0 - w) * self._evidence + w * (row - row.max())
