"""
`vpr_lifecycle_node`: vpr_node as a managed (lifecycle) node.

For systems that start, pause and stop their nodes in order (nav2's lifecycle manager,
`ros2 lifecycle set`, launch_ros' LifecycleNode: `ros2 launch vpr_ros vpr.launch.py
lifecycle:=true`).

The very same node as `vpr_node` (vpr_ros/ros/node.py): the plain node runs its set-up steps at
once in its constructor, this one runs them on the transitions, so there is one frame path:

| transition | what happens |
|---|---|
| (construction) | parameters declared and checked, unknown names warned about (bad: exit 2) |
| configure | model, map (continued or moved aside: `load_map`), detector, outputs, timers |
| activate | subscriptions to the inputs, the worker thread |
| deactivate | the worker stops after its frame; the subscriptions are destroyed |
| cleanup | the map saved, then closed: `map_dir`'s lock released; outputs, services gone |
| shutdown | the worker stopped, the map saved and closed (from any state) |

Deactivate unsubscribes rather than dropping frames in the callback (what `~/pause` does): an
inactive node then costs nothing per frame, DDS no longer delivers (or copies) the images
(bench/bench_lifecycle_pause.py, 640x480 at 30 Hz: paused 13.5 % of a core, inactive 0.2 %,
no frames 0.3 %). A transition that fails (a map of another model,
an unwritable map_dir, a failed save on cleanup) logs why and returns FAILURE: the node stays
where it was and nothing is lost. Ctrl-C (SIGINT/SIGTERM) saves the map once, as the plain
node's does (vpr_ros/ros/shutdown.py), whatever state the node is in. The outputs are plain
publishers: while inactive only /diagnostics is published. Transitions, parameter changes,
services and timers share one mutually exclusive callback group, so none of them sees a
transition half-done; the inputs keep their own.

It is the rclpy `LifecycleNode` made of `LifecycleNodeMixin` and a `Node`, as rclpy composes its
own: here the Node is vpr_node.
"""
import sys
import traceback
from typing import Callable

from rclpy.lifecycle import LifecycleNodeMixin, LifecycleState, TransitionCallbackReturn

from vpr_ros.ros.node import main as node_main
from vpr_ros.ros.node import StartupError, VprNode
from vpr_ros.ros.params import ParamError

__all__ = ['main', 'VprLifecycleNode']

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


class VprLifecycleNode(LifecycleNodeMixin, VprNode):
    """vpr_node whose set-up steps run on lifecycle transitions (see the module docstring)."""

    def __init__(self, **kwargs) -> None:
        VprNode.__init__(self, managed=True, **kwargs)
        # Transitions, parameter changes, ~/ services and timers in one mutually exclusive
        # group (the node's default one, the lifecycle services' too): no diagnostics tick or
        # ~/save_map ever runs half-way through a cleanup that closes the map.
        self._service_group = self._timer_group = self.default_callback_group
        LifecycleNodeMixin.__init__(self)
        self._made: list = []    # publishers, services, timers of configure
        self._inputs: list = []  # subscriptions of activate

    def _entities(self) -> set:
        return {*self.publishers, *self.subscriptions, *self.services, *self.timers}

    def _step(self, name: str, step: Callable[[], object]) -> TransitionCallbackReturn:
        """Run one transition's step: SUCCESS, or FAILURE with the reason logged."""
        try:
            step()
        except (ParamError, StartupError) as err:
            self._log.error(f'{name} failed: {err}')
            return FAILURE
        except Exception as err:  # rclpy would turn it into ERROR without a word
            self._log.error(f'{name} failed: {err!r}\n{traceback.format_exc()}')
            return FAILURE
        return SUCCESS

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        def configure() -> None:
            before = self._entities()
            try:
                self._configure()
            finally:  # a half-done configure leaves nothing behind
                self._made = [e for e in self._entities() if e not in before]
            self._log.info(f'vpr_node configured: model {self._encoder.fingerprint}, map '
                           f'{self.params.map_path or "(memory only)"} with {len(self._map)} '
                           f'keyframes, session {self._map.session}')
        result = self._step('configure', configure)
        if result != SUCCESS:
            self._drop_core()
        return result

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        def activate() -> None:
            before = self._entities()
            self._intake.queue.reopen()
            try:
                self._activate()
            finally:
                self._inputs = [e for e in self._entities() if e not in before]
        return self._step('activate', activate)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        def deactivate() -> None:
            self._destroy(self._inputs)
            self._inputs = []
            self.stop_worker()
            self.image_topic = self.pose_topic = ''
            self._log.info(f'vpr_node inactive: inputs unsubscribed, {len(self._map)} '
                           'keyframes in the map')
        return self._step('deactivate', deactivate)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        def cleanup() -> None:
            ok, text = self.release_map()
            if not ok:
                raise StartupError(f'the map stays open (try cleanup again): {text}')
            self._log.info(f'vpr_node cleaned up: {text}; map_dir released')
            self._drop_core()
        return self._step('cleanup', cleanup)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._step('shutdown', self._wind_down)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._log.error(f'error in state {state.label}: saving the map and releasing it')
        return self._step('error recovery', self._wind_down)

    def _wind_down(self) -> None:
        """Stop the worker, save the map once (as on Ctrl-C), close it, forget the rest."""
        self._destroy(self._inputs)
        self._inputs = []
        saved = self.shutdown()  # stops the worker first; a second call saves nothing more
        self._drop_core()
        if not saved:
            raise StartupError('saving the map failed; the last good save is on disk')

    def _drop_core(self) -> None:
        """Forget what configure made (cleanup, shutdown, a failed configure): unconfigured."""
        self._destroy(self._inputs + self._made)
        self._inputs, self._made = [], []
        self.stop_worker()
        if self._map is not None:  # cleanup saved and closed it; elsewhere it was saved
            self._map.close()
        priors = getattr(self._detector, 'priors', None)
        if priors is not None:  # prior maps: read-only snapshots, their database files closed
            priors.close()
        self._map = self._detector = self._encoder = self._camera_info = None

    def _destroy(self, entities: list) -> None:
        kinds = ((self.publishers, self.destroy_publisher),
                 (self.subscriptions, self.destroy_subscription),
                 (self.services, self.destroy_service), (self.timers, self.destroy_timer))
        for group, destroy in kinds:
            for e in set(group) & set(entities):
                destroy(e)

    def _apply_running(self, new) -> None:
        """Live parameter changes while unconfigured apply at the next configure."""
        if self._map is None:
            self._running = new
            return
        super()._apply_running(new)


def main(args=None) -> int:
    """Run the console script `vpr_lifecycle_node` (exit codes as `vpr_node`'s)."""
    return node_main(args, VprLifecycleNode)


if __name__ == '__main__':
    sys.exit(main())
