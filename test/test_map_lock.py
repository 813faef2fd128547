"""One process per map directory (issue 10 #3): a second opener is refused, clearly."""
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ros_fixtures import run_to_exit  # noqa: E402

from vpr_ros.core.errors import MapError, MapLockedError  # noqa: E402
from vpr_ros.map.place_map import PlaceMap  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FP = 'a' * 64

OPENER = r'''
import sys
from vpr_ros.core.errors import MapLockedError
from vpr_ros.map.place_map import PlaceMap
try:
    m = PlaceMap.open(sys.argv[1], 'a' * 64, 8, load_existing=True)
except MapLockedError as err:
    print('LOCKED', err, flush=True)
    sys.exit(3)
print('OPENED', len(m), flush=True)
'''


def _open_in_child(d: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', OPENER, d], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_second_process_is_refused_while_held(tmp_path) -> None:
    d = str(tmp_path / 'm')
    m = PlaceMap(8, FP)
    m.add(np.ones(8), 0)
    m.save(d)  # a tool that saved and let go
    held = PlaceMap.open(d, FP, 8, load_existing=True)
    res = _open_in_child(d)
    assert res.returncode == 3, res.stdout + res.stderr
    assert d in res.stdout and f'process {os.getpid()}' in res.stdout, res.stdout
    # Within one process the holder may save; another process may not save there either.
    held.add(np.ones(8), 1)
    held.save(d)
    held.close()
    res = _open_in_child(d)
    assert res.returncode == 0 and 'OPENED 2' in res.stdout, res.stdout + res.stderr


def test_lock_taken_at_first_add_on_a_new_directory(tmp_path) -> None:
    d = str(tmp_path / 'new')
    m = PlaceMap.open(d, FP, 8, load_existing=True)
    assert not os.path.exists(d)  # opening writes nothing
    m.add(np.ones(8), 0)  # ids are reserved in the directory before they are handed out
    assert _open_in_child(d).returncode == 3
    del m  # garbage collection releases the lock as close() does
    assert _open_in_child(d).returncode == 0


def test_locked_error_is_a_map_error() -> None:
    assert issubclass(MapLockedError, MapError)


@pytest.mark.ros
def test_node_refuses_a_held_map_dir(tmp_path) -> None:
    d = tmp_path / 'map'
    d.mkdir()
    held = PlaceMap.open(str(d), FP, 8, load_existing=True)
    res = run_to_exit({'map_dir': str(d), 'load_map': True}, str(tmp_path), 'vpr_locked')
    assert res.returncode == 2, res.stderr
    assert "'map_dir'" in res.stderr and f'process {os.getpid()}' in res.stderr, res.stderr
    held.close()


def test_open_with_create_holds_a_new_directory_at_once(tmp_path) -> None:
    d = str(tmp_path / 'a' / 'new')
    m = PlaceMap.open(d, FP, 8, load_existing=True, create=True)
    assert os.path.isdir(d) and len(m) == 0
    assert _open_in_child(d).returncode == 3
    m.close()
    assert _open_in_child(d).returncode == 0
