"""
When the node falls behind: the frames waiting in the queue go through one forward together.

On a GPU a batch of N frames costs little more than one (bench/bench_gpu.py), so a node that
fell behind catches up instead of dropping frames. The worker takes up to `max_batch` waiting
frames (worker.DropOldestQueue.get_many), orders them by stamp, checks each (decode, size,
pose, stamp gate: frame_intake) and embeds the accepted ones in one `Encoder.embed` call per
encoding. Then each frame goes through `LoopDetector.process` alone, in stamp order, exactly as
one by one (keyframe decision, search, verification, publishing, refusals with their status
row): the detector asks `PrefetchEncoder.embed_one` for the descriptor and gets the one the
batch computed for that very image (matched by identity, never by position). A frame the batch
could not embed (an image the encoder refuses) gets its own forward, and so its own error; a
frame the detector then skips (degenerate, late) had its descriptor computed for nothing.

ROS-free, so the batching logic is tested without a graph (test/test_batching.py).
"""
from dataclasses import replace
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np

from vpr_ros.core.errors import VPRError

Item = tuple[Any, float]  # (message, monotonic receive time), as the image callback queues it


class PrefetchEncoder:
    """
    The encoder as the detector sees it: descriptors a batch already computed, else a forward.

    Everything but `embed_one` is the wrapped encoder's (dim, fingerprint, device...).
    Counters: `batches` (forwards of more than one frame) and `batched_frames` (frames whose
    descriptor came from one), for /diagnostics.
    """

    def __init__(self, encoder) -> None:
        self._enc = encoder
        self._ready: dict[int, tuple[np.ndarray, np.ndarray, str, float]] = {}
        self._served: dict[int, tuple[np.ndarray, float]] = {}
        self._lock = threading.Lock()
        self.batches = 0
        self.batched_frames = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._enc, name)

    def prefetch(self, frames: Sequence[tuple[np.ndarray, str]]) -> None:
        """Embed (image, encoding) frames, one forward per encoding; a lone frame waits."""
        by_encoding: dict[str, list[np.ndarray]] = {}
        for image, encoding in frames:
            by_encoding.setdefault(encoding, []).append(image)
        for encoding, images in by_encoding.items():
            if len(images) < 2:
                continue  # embedded by the detector itself, as without batching
            t0 = time.perf_counter()
            try:
                descs = self._enc.embed(images, encoding)
            except (VPRError, ValueError):  # each frame gets its own forward, its own error
                continue
            share = (time.perf_counter() - t0) / len(images)
            with self._lock:
                for image, desc in zip(images, descs):
                    self._ready[id(image)] = (image, desc, encoding, share)
                self.batches += 1

    def embed_one(self, image: np.ndarray, encoding: str = 'rgb8') -> np.ndarray:
        """Return the batch's descriptor of this very image, else run one forward."""
        with self._lock:
            hit = self._ready.get(id(image))
            if hit is not None and hit[0] is image and hit[2] == encoding:
                del self._ready[id(image)]
                self._served[id(image)] = (image, hit[3])
                self.batched_frames += 1
                return hit[1]
        return self._enc.embed_one(image, encoding)

    def charge(self, result, image: np.ndarray):
        """
        Return `result` with its share of the batch forward added to its embed and total time.

        The detector timed a descriptor that was ready; the core time the node reports must
        still include the forward that made it.
        """
        with self._lock:
            hit = self._served.pop(id(image), None)
        if hit is None or hit[0] is not image:
            return result
        return replace(result, t_embed_s=result.t_embed_s + hit[1],
                       t_total_s=result.t_total_s + hit[1])

    def clear(self) -> None:
        """Forget what the last batch left unused (skipped frames): no image is kept alive."""
        with self._lock:
            self._ready.clear()
            self._served.clear()


def run_batch(items: Sequence[Item], stamp_of: Callable[[Item], int],
              check: Callable[[Item], Any], finish: Callable[[Item, Any], None],
              on_error: Callable[[Item, BaseException], bool],
              prefetch: PrefetchEncoder) -> bool:
    """
    Process queued frames in stamp order with one forward; False when the worker must stop.

    `check(item)` returns what `finish` needs (with `.image` and `.encoding`: a
    frame_intake.Checked) or raises (a refusal); every frame, checked or refused, then
    reaches `finish` or `on_error` in stamp order, so status rows and counters come out as they
    would one by one. `on_error` returns False to stop the worker (shutdown).
    """
    ordered = sorted(items, key=stamp_of)  # stable: equal stamps keep their arrival order
    checked: list[tuple[Item, Any, BaseException | None]] = []
    for item in ordered:
        try:
            checked.append((item, check(item), None))
        except Exception as err:  # a refusal: reported in order below
            checked.append((item, None, err))
    if len(ordered) > 1:
        prefetch.prefetch([(c.image, c.encoding) for _, c, err in checked if err is None])
    try:
        for item, c, err in checked:
            try:
                if err is not None:
                    raise err
                finish(item, c)
            except Exception as e:  # one frame must never end the batch
                if not on_error(item, e):
                    return False
    finally:
        prefetch.clear()
    return True
