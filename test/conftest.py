"""
Session-wide fixtures: DDS stays on loopback and uses a random domain for each test session.

Set here, before anything imports rclpy, so tests, the node processes they start and any child
process inherit it. Nothing in a developer's shell is needed.
"""
import os
import random

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), 'shared')

os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ['ROS_DOMAIN_ID'] = str(random.SystemRandom().randint(1, 101))
os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE',
                      os.path.join(REPO, 'config', 'fastdds_shm16mb.xml'))
os.environ.setdefault('PYOPENGL_PLATFORM', 'osmesa')


@pytest.fixture(scope='session')
def repo_root() -> str:
    return REPO


@pytest.fixture(scope='session')
def corridor_dir() -> str:
    path = os.path.join(SHARED, 'data', 'corridor')
    if not os.path.isdir(path):
        pytest.skip('../shared/data/corridor is not beside this checkout')
    return path


SIM_SIZE = (96, 72)   # width, height of the simulator tests' renders


@pytest.fixture(scope='module')
def renderer():
    """One OSMesa renderer of SIM_SIZE per module (skips where headless rendering is missing)."""
    pytest.importorskip('pyrender')
    from vpr_ros.sim.render_backend import RenderBackendError, Renderer
    try:
        r = Renderer(*SIM_SIZE)
    except RenderBackendError as exc:
        pytest.skip(f'no headless rendering here: {exc}')
    yield r
    r.close()


@pytest.fixture(scope='module')
def encoder():
    """Build the built-in model on the CPU once per test module (a test may whiten it)."""
    from vpr_ros.model.encoder import build_encoder
    return build_encoder('', device='cpu')


@pytest.fixture(scope='module')
def seq():
    """Make the synthetic image sequence with revisits (image_sequences.py) once per module."""
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from image_sequences import make_sequence
    return make_sequence()
