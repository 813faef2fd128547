"""
How vpr_node stops: the first SIGINT/SIGTERM starts an orderly shutdown, later ones are ignored.

Ctrl-C under `ros2 launch` delivers SIGINT twice (the terminal signals the whole process group,
and launch forwards its own), and launch sends SIGTERM when the node is slow to go. rclpy's own
handlers turned the second signal into a KeyboardInterrupt inside the shutdown save, so the map
was lost. The node therefore starts rclpy without signal handlers
(`SignalHandlerOptions.NO`) and installs these: the first signal sets an event the main thread
waits on; the main thread stops the worker, saves the map and shuts rclpy down; every further
signal only logs that it was ignored. Python runs signal handlers in the main thread between
bytecodes, so a handler never interrupts a write half-way, it only delays it.

`exit_now` ends the process with `os._exit` once everything that matters is on disk: the
interpreter's own teardown (torch's mostly) took ~3 s after the save, and `ros2 launch`
escalates to SIGTERM 5 s after SIGINT. Logs are flushed first (rclpy's shutdown flushes the ROS
log file; stdout/stderr are flushed here).
"""
import os
import signal
import sys
import threading
import time
from typing import Callable

from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_log_to_stderr(text: str) -> None:
    """Write a line to stderr without Python's buffered stream (safe from a signal handler)."""
    try:
        os.write(sys.stderr.fileno(), (text + '\n').encode(errors='replace'))
    except (OSError, ValueError):
        pass


class StopSignals:
    """The first SIGINT/SIGTERM requests a stop; later ones are logged and ignored."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.first_at: float | None = None  # time.monotonic() of the first stop request
        self.first_name = ''
        self.ignored = 0
        self.phase = 'stopping'
        self.log: Callable[[str], None] = stop_log_to_stderr

    def install(self, signals: tuple[int, ...] = STOP_SIGNALS) -> None:
        """Install the handlers (main thread only, as Python requires)."""
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.first_at is None:
            self.request(name)
            self.log(f'vpr_node: {name} received: shutting down (stop the worker, save the '
                     'map); further SIGINT/SIGTERM are ignored until the save is done')
            return
        self.ignored += 1
        self.log(f'vpr_node: {name} ignored: shutdown in progress ({self.phase})')

    def request(self, why: str) -> None:
        """Ask for a stop (a signal, or the executor ending on its own)."""
        if self.first_at is None:
            self.first_at = time.monotonic()
            self.first_name = why
        self.requested.set()

    def wait(self, poll_s: float = 0.5) -> None:
        """Block until a stop is requested; the short waits let handlers run promptly."""
        while not self.requested.wait(poll_s):
            pass

    def elapsed_s(self) -> float:
        """Seconds since the first stop request (0 when none)."""
        return 0.0 if self.first_at is None else time.monotonic() - self.first_at


def _spin(executor, stop: StopSignals, errors: list) -> None:
    """Executor thread; if it ends on its own (context gone, error) the node still saves."""
    try:
        executor.spin()
    except ExternalShutdownException:
        pass
    except Exception as err:  # the map must still be saved: ask for a stop, exit 1
        errors.append(err)
        stop.log(f'vpr_node: executor failed: {err!r}')
    finally:
        stop.request('executor end')


def spin_until_stopped(node, stop: StopSignals) -> int:
    """
    Spin `node` until a stop is requested, then let it stop and save; return the exit code.

    The executor runs in its own thread, so the main thread is free to run the signal
    handlers and then the shutdown itself: `node.shutdown()` (worker, save: True when saved),
    the executor, the node. 0 when saved, 1 when the save failed or the executor broke.
    """
    executor = MultiThreadedExecutor(num_threads=3)
    executor.add_node(node)
    errors: list = []
    spinner = threading.Thread(target=_spin, args=(executor, stop, errors), name='vpr_spin',
                               daemon=True)
    spinner.start()
    stop.wait()
    stop.phase = 'saving the map'
    saved = node.shutdown()
    stop.phase = 'closing'
    executor.shutdown(timeout_sec=1.0)
    spinner.join(timeout=2.0)
    node.destroy_node()
    return 0 if saved and not errors else 1


def exit_now(code: int) -> None:
    """Flush stdout/stderr and end the process at once, skipping the interpreter teardown."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
