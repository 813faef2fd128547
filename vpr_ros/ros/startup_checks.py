"""
Start-up checks beyond single parameter values: can the map be written, what will cost dearly.

They run before the model loads, so a refused start-up has written nothing and a costly
setting, a misspelled parameter or a map left at an old default is named in the log before
it costs anything.
"""
import os
import tempfile
from typing import Iterable

from vpr_ros.ros.params import BY_NAME, ParamError, Params, unknown_parameters

OLD_DEFAULT_MAP_DIR = '~/.ros/vpr_ros/map'  # the default map_dir before it was per node


def start_warnings(given: Iterable[str], map_dir: str, path: str) -> list[str]:
    """
    Warn about unknown parameter names among those the node was `given`, and an old map.

    A misspelled name in a params file (`tpo_k: 3`) used to be ignored without a word while the
    default ran; it is named with its likely meaning (ROS's own names are not reported).
    `map_dir` as given and `path` as resolved: at the default, a map saved where the old
    default put it is not continued by itself, so the node says where it is.
    """
    out = []
    unknown = unknown_parameters(sorted(given))
    if unknown:
        out.append(f'unknown parameter(s) ignored: {", ".join(unknown)}; `ros2 param list` and '
                   "README.md's parameter table list the node's parameters")
    old = os.path.expanduser(OLD_DEFAULT_MAP_DIR)
    if (map_dir == BY_NAME['map_dir'].default and path
            and not os.path.exists(os.path.join(path, 'CURRENT'))
            and os.path.exists(os.path.join(old, 'CURRENT'))):
        out.append(f'a map saved at the old default map_dir {old} is not continued: the '
                   f'default is now one directory per node ({path}); to continue it, set '
                   f'map_dir to {old} or move it to {path}')
    return out


def cost_warnings(p: Params) -> list[str]:
    """Warn about accepted values that cost more than one likely means, naming the cost."""
    out = []
    h, w = p.image_size
    if h * w > 4 * 224 * 224:
        out.append(f'image_size {h}x{w} is {h * w / (224 * 224):.0f}x the pixels of the '
                   'default 224x224: expect about that factor in encoder time and memory per '
                   'frame')
    if 0 < p.autosave_period_s < 30.0:
        out.append(f'autosave_period_s {p.autosave_period_s:g}: every save writes the whole '
                   'map (seconds for tens of thousands of keyframes) while frames wait; the map '
                   'is also saved on shutdown and on ~/save_map')
    if 0 < p.markers_period_s < 0.5:
        out.append(f'markers_period_s {p.markers_period_s:g}: each marker message carries '
                   'every keyframe position; RViz needs no more than a few per second')
    if p.max_image_pixels > BY_NAME['max_image_pixels'].default:
        out.append(f'max_image_pixels {p.max_image_pixels}: one decoded frame may take up to '
                   f'{p.max_image_pixels * 4 / 2**20:.0f} MiB')
    return out


def check_map_dir(path: str) -> None:
    """
    Raise ParamError naming map_dir unless a map can be written there; leave no trace.

    An unwritable map_dir (a file, a read-only filesystem, /proc) used to fail at the first
    save, after the robot had mapped for minutes, and the node exited 0 having lost the map.
    Missing directories are created to probe them and removed again, and the probe file is
    created with O_EXCL (never through a link), so a refused start-up leaves nothing behind.
    """
    if not path:
        return
    created: list[str] = []
    probe = None
    try:
        missing, d = [], os.path.abspath(path)
        while not os.path.lexists(d):
            missing.append(d)
            d = os.path.dirname(d)
        for d in reversed(missing):
            os.mkdir(d)
            created.append(d)
        if not os.path.isdir(path):
            raise NotADirectoryError(20, 'not a directory')
        fd, probe = tempfile.mkstemp(prefix='.vpr_write_probe_', dir=path)
        try:
            os.write(fd, b'x')
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        raise ParamError(f"parameter 'map_dir': {path!r} is not a writable directory "
                         f'({err.strerror or err}); expected a directory the node can create '
                         "and write, or '' to keep the map in memory only") from None
    finally:
        if probe is not None:
            os.unlink(probe)
        for d in reversed(created):
            try:
                os.rmdir(d)
            except OSError:
                pass

