"""
``vpr-export``: a training run's best network -> the model file the node loads.

Reads ``best.pt`` (or any ``vpr-train`` checkpoint), rebuilds the `VPRNet` from its spec, can
attach PCA whitening fitted on the map descriptors of given traverses (as the GCL evaluation
does), and writes the one model file through `vpr_ros.model.model_file.save_model`, with
provenance: loss, training data, validation metrics, date and git commit.
The node then loads it with
``build_encoder(path)``, so whatever the node embeds went through the same network and the same
preprocessing as training and evaluation.
"""
import argparse
import datetime
import os
import subprocess
import sys
from typing import Sequence

import numpy as np

from vpr_ros.core.errors import VPRError
from vpr_ros.model.encoder import Encoder, ModelSpec, VPRNet
from vpr_ros.model.model_file import save_model
from vpr_ros.training.data.dataset import load_traverses
from vpr_ros.training.fit.checkpoint import (
    FORMAT_BEST,
    FORMAT_CHECKPOINT,
    load_checkpoint,
    resolve_checkpoint,
)


def git_commit(path: str | None = None) -> str | None:
    """Commit of the source tree (with '-dirty' for local changes), None outside git."""
    where = path or os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(['git', '-C', where, 'rev-parse', 'HEAD'], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(['git', '-C', where, 'status', '--porcelain', '-uno'],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ('-dirty' if dirty else '') if sha else None


def load_trained_net(path: str) -> tuple[VPRNet, dict]:
    """Rebuild the network of a best/last training checkpoint; return it and the checkpoint."""
    path = resolve_checkpoint(path)
    ckpt = load_checkpoint(path, (FORMAT_BEST, FORMAT_CHECKPOINT))
    spec = dict(ckpt['spec'])
    spec['whitening_dim'] = None
    net = VPRNet(ModelSpec(**spec), pretrained=False)
    net.load_state_dict(ckpt['model'])
    net.eval()
    ckpt['path'] = os.path.abspath(path)
    return net, ckpt


def map_descriptors(net: VPRNet, image_paths: Sequence[str], device: str = 'cpu',
                    batch_size: int = 32) -> np.ndarray:
    """Descriptors of map images with the network as exported (unreadable files skipped)."""
    from vpr_ros.training.data.dataset import load_image

    enc = Encoder(net, 'export', device=device, batch_size=batch_size, channels_last=False)
    out = []
    for s in range(0, len(image_paths), batch_size):
        imgs = [im for im in (load_image(p) for p in image_paths[s:s + batch_size])
                if im is not None]
        if imgs:
            out.append(enc.embed(imgs, 'rgb8'))
    net.cpu().eval()
    if not out:
        raise VPRError('no readable map image to fit whitening on')
    return np.concatenate(out)


def export_model(checkpoint: str, out_path: str, whiten_dim: int | None = None,
                 whiten_map: Sequence[str] = (), data_root: str = '', device: str = 'cpu',
                 extra: dict | None = None, calibration: dict | None = None,
                 projection: str = 'whitening', delta_from_imagenet: bool = False
                 ) -> tuple[str, str, dict]:
    """
    Write the model file; returns (path, fingerprint, provenance).

    `projection` 'whitening' (scaled by 1/sqrt(eigenvalue)) or 'pca' (plain, training/
    projection.py) is fitted to `whiten_dim` on the `whiten_map` traverses and attached.

    `calibration` (training/ship/loop_calibration.py `calibrate_net` keywords) fits the calibrated
    operating point on validation loops and stores it in the provenance.
    `delta_from_imagenet` stores only the tensors that differ from the pinned ImageNet weights
    (model file version 2; `save_model` says why that is asked for, not automatic).
    """
    net, ckpt = load_trained_net(checkpoint)
    args = ckpt.get('args', {})
    whitening = None
    if whiten_dim:
        if not whiten_map:
            raise VPRError('--whiten-dim/--pca-dim needs --whiten-map traverses to fit on')
        from vpr_ros.training.ship.projection import fit_projection

        paths = [p for t in load_traverses(data_root, whiten_map) for p in t.image_paths]
        descs = map_descriptors(net, paths, device)
        dim = int(min(whiten_dim, descs.shape[1], len(descs) - 1))
        mean, proj = fit_projection(descs, dim, projection)
        net.set_whitening(mean, proj)
        whitening = {'dim': dim, 'requested': int(whiten_dim), 'kind': projection,
                     'fitted_on': list(whiten_map),
                     'n_descriptors': int(len(descs))}
    metrics = ckpt.get('metrics') or (ckpt.get('history') or [{}])[-1]
    provenance = {
        'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'git_commit': git_commit(),
        'tool': 'vpr-export',
        'checkpoint': ckpt['path'],
        'epoch': ckpt.get('epoch'),
        'loss': args.get('loss'),
        'margin': args.get('margin'),
        'data': {k: args.get(k) for k in ('data_root', 'train_map', 'train_query', 'val_map',
                                          'val_query', 'fov_deg', 'radius')}
        | {'labels': ckpt.get('labels')},
        'training': {k: args.get(k) for k in ('epochs', 'batch_size', 'lr', 'momentum',
                                              'weight_decay', 'lr_step', 'train_blocks',
                                              'seed', 'augment', 'aug_views',
                                              'lowtex_negatives')},
        'metrics': {k: metrics.get(k) for k in ('r1', 'r5', 'r10', 'map5', 'ap')
                    if k in metrics},
        'whitening': whitening,
    }
    provenance.update(extra or {})
    if calibration:
        from vpr_ros.model.operating_point import PROVENANCE_KEY
        from vpr_ros.training.ship.loop_calibration import calibrate_net
        point = calibrate_net(net, device=device, **calibration)
        provenance[PROVENANCE_KEY] = point.to_dict()
    fingerprint = save_model(out_path, net, provenance, delta_from_imagenet=delta_from_imagenet)
    return out_path, fingerprint, provenance


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``vpr-export``."""
    ap = argparse.ArgumentParser(prog='vpr-export', description='Export the best trained '
                                 'network (best.pt of a vpr-train run) as a node model file.')
    ap.add_argument('checkpoint', help='best.pt / checkpoint.pt, or a vpr-train output folder')
    ap.add_argument('--out', required=True, help='model file to write')
    ap.add_argument('--whiten-dim', type=int, default=0,
                    help='attach PCA whitening to this dimension (fitted on --whiten-map); '
                         'not recommended: fitted on training traverses it cost 0.15-0.38 '
                         'R@1 on unseen conditions (check with vpr-eval --whiten-dim first)')
    ap.add_argument('--pca-dim', type=int, default=0,
                    help='attach a plain PCA projection to this dimension (no per-component '
                         'scaling; fitted on --whiten-map): smaller maps, see '
                         'doc/results/pca_vs_whitening.md for its R@1 on unseen gardens')
    ap.add_argument('--whiten-map', nargs='+', default=[],
                    help='traverses to fit --whiten-dim/--pca-dim on (names under '
                         '--data-root, or index paths)')
    ap.add_argument('--data-root', default='')
    ap.add_argument('--device', default='cpu', help='device for the whitening descriptors')
    ap.add_argument('--delta-from-imagenet', action='store_true',
                    help='store only the tensors that differ from the pinned ImageNet weights '
                         '(a third of the size for train_blocks 2; loading then needs those '
                         'weights, as the built-in model does)')
    from vpr_ros.training.ship.loop_calibration import (
        add_calibration_arguments,
        calibration_from_args,
    )
    add_calibration_arguments(ap)
    args = ap.parse_args(argv)
    if args.whiten_dim and args.pca_dim:
        ap.error('give --whiten-dim or --pca-dim, not both')
    try:
        path, fp, prov = export_model(args.checkpoint, args.out,
                                      args.whiten_dim or args.pca_dim or None,
                                      args.whiten_map, args.data_root, args.device,
                                      calibration=calibration_from_args(args),
                                      projection='pca' if args.pca_dim else 'whitening',
                                      delta_from_imagenet=args.delta_from_imagenet)
    except (VPRError, ValueError) as exc:
        print(f'vpr-export: error: {exc}', file=sys.stderr)
        return 2
    m = prov['metrics']
    print(f'vpr-export: wrote {path} (sha256 {fp[:16]}…), epoch {prov["epoch"]}, '
          f'loss {prov["loss"]}, R@1 {m.get("r1")}, R@5 {m.get("r5")}'
          + (f', {prov["whitening"]["kind"]} {prov["whitening"]["dim"]}'
             if prov['whitening'] else ''))
    if 'operating_point' in prov:
        from vpr_ros.core.calibration import OperatingPoint
        print('vpr-export: operating point ' + OperatingPoint.from_dict(
            prov['operating_point']).describe())
    return 0


if __name__ == '__main__':
    sys.exit(main())


__all__ = ['export_model', 'git_commit', 'load_trained_net', 'main', 'map_descriptors']
