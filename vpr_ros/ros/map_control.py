"""
The node's map control: autosave, the map services, and the one save at shutdown.

The services are `~/save_map`, `~/reset_map` and `~/pause`. A mixin of the node
(vpr_ros/ros/node.py), apart from the frame path: it uses the node's map, detector, intake,
markers, core lock, worker and parameters. The managed node (vpr_ros/ros/lifecycle_node.py)
stops the worker on deactivate and releases the map (saved, then closed) on cleanup. Saves and
resets hold the core lock, so a save never sees half a frame. A failed save (disk full, a
read-only file system) is kept as `_save_error`, logged as an error and reported as an ERROR in
/diagnostics; it never ends the worker, and the last good map on disk stays as it was
(PlaceMap.save is atomic).
"""
import os
import sys
import time

SAVE_DELAY_ENV = 'VPR_NODE_TEST_SAVE_DELAY_S'


class MapControl:
    """Autosave, services and the shutdown save of a node that has a map and a worker."""

    # Until configured (a managed node) there is neither map nor worker: nothing to stop or save.
    _map = None
    _worker = None
    _saved_on_exit, _exit_saved = False, True

    def _maybe_autosave(self) -> None:
        period = self.params.autosave_period_s
        if period <= 0 or not self.params.map_path:
            return
        if time.monotonic() - self._last_save_wall >= period:
            self._last_save_wall = time.monotonic()  # a failed save is retried a period later
            ok, text = self.save_map()
            if ok:
                self._log.info(f'autosave: {text}')
            else:
                self._log.error(f'autosave: {text}')

    def save_map(self) -> tuple[bool, str]:
        """Save under the core lock (never half a frame); (ok, message); a failure is kept."""
        path = self.params.map_path
        if not path:
            return False, 'map_dir is empty: the map is kept in memory only'
        t0 = time.perf_counter()
        try:
            with self._core_lock:
                n = len(self._map)
                gen = self._map.save(path)
        except Exception as err:  # MapError, OSError (disk full), FAISS's RuntimeError
            self._save_error = f'saving the map failed: {err}'
            return False, self._save_error
        self._last_save_wall = time.monotonic()
        self._save_error = ''
        return True, (f'saved {n} keyframes to {gen} in '
                      f'{(time.perf_counter() - t0) * 1e3:.0f} ms')

    def _srv_save(self, request, response):
        response.success, response.message = self.save_map()
        return response

    def _srv_reset(self, request, response):
        with self._core_lock:
            n = len(self._map)
            self._map.reset()
            self._detector.reset()
        self._markers.clear()
        response.success = True
        response.message = (f'map reset: {n} keyframes forgotten (in memory; the saved map is '
                            'replaced at the next save)')
        self._log.info(response.message)
        return response

    def _srv_pause(self, request, response):
        self._paused = bool(request.data)
        if self._paused:
            self._intake.queue.clear()
        response.success = True
        response.message = 'paused' if self._paused else 'resumed'
        self._log.info(f'place recognition {response.message}')
        return response

    def stop_worker(self) -> None:
        """Stop the worker after its current frame; what was still queued is dropped (counted)."""
        if self._worker is None:
            return
        self._stop.set()
        self._intake.queue.close()
        self._worker.join(timeout=30.0)
        self._worker = None
        self._intake.queue.clear()

    def release_map(self) -> tuple[bool, str]:
        """
        Save the map, then close it (map_dir's lock released); (ok, message).

        A managed node's cleanup and shutdown. A failed save keeps the map open and held, so
        nothing is lost: the caller reports the failure and may try again.
        """
        if self._map is None:
            return True, 'no map open'
        ok, text = self.save_map() if self.params.map_path else (
            True, f'{len(self._map)} keyframes forgotten (map_dir is empty: memory only)')
        if ok:
            with self._core_lock:
                self._map.close()
                self._map = None
        return ok, text

    def shutdown(self) -> bool:
        """Stop the worker (after its current frame), then save the map once; False: failed."""
        self.stop_worker()
        path = self.params.map_path
        if self._saved_on_exit or self._map is None or not path:
            return self._exit_saved
        self._saved_on_exit = True
        print(f'vpr_node: shutdown: saving {len(self._map)} keyframes to {path}', flush=True)
        delay = float(os.environ.get(SAVE_DELAY_ENV) or 0.0)
        if delay > 0:  # test hook: a slow save, so that a test can signal during it
            time.sleep(delay)
        ok, text = self.save_map()
        self._exit_saved = ok
        print(f'vpr_node: shutdown: {text}', file=sys.stderr if not ok else sys.stdout,
              flush=True)
        return ok
