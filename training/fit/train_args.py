"""
The ``vpr-train`` command line: every option, its default and why, in one place.

Kept apart from the training loop (`training.fit.train`) so the options a user reads in
``--help`` are not buried in the loop that runs them; `vpr-train-demo` builds its runs from the
same parser.
"""
import argparse

from vpr_ros.core.psi import add_fov_arguments
from vpr_ros.model.encoder import ModelSpec
from vpr_ros.training.fit.augment import add_augment_arguments
from vpr_ros.training.fit.best_epoch import DEFAULT_SELECT_METRIC, SELECT_METRICS
from vpr_ros.training.fit.losses import DEFAULT_MARGIN
from vpr_ros.training.fit.lowtex import add_lowtex_arguments

#: The learning rate when --lr is not given: the GCL paper's, per loss.
DEFAULT_LR = {'gcl': 0.1, 'cl': 0.01}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog='vpr-train', description='Train a place-recognition network with the GCL '
        '(graded FoV-overlap labels) or the binary contrastive loss. Use torchrun for '
        'several GPUs.')
    d = ap.add_argument_group('data')
    d.add_argument('--data-root', default='', help='folder holding the traverses (indices); '
                   'without it the traverse arguments are index paths')
    d.add_argument('--train-map', nargs='+', default=[], help='map traverses (partners); '
                   'omitted: pairs within --train-query')
    d.add_argument('--train-query', nargs='+', required=True, help='query traverses (anchors)')
    d.add_argument('--val-map', nargs='+', default=[], help='validation map traverses')
    d.add_argument('--val-query', nargs='+', default=[], help='validation query traverses')
    d.add_argument('--labels', default='', help='ψ file from vpr-labels (query × map); default: '
                   'the one vpr-labels writes next to the first query index, else computed')
    d.add_argument('--pairs-per-epoch', type=int, default=0,
                   help='pairs per epoch over all ranks (default: one per query image)')
    d.add_argument('--workers', type=int, default=4, help='DataLoader worker processes')
    d.add_argument('--prefetch', type=int, default=4, help='batches prefetched per worker')
    d.add_argument('--feature-cache', choices=('auto', 'on', 'off'), default='auto',
                   help='run the frozen blocks once per image and train on their cached output '
                        '(same result, several times faster); auto: on for one process when '
                        'it fits --cache-budget-gb')
    d.add_argument('--cache-budget-gb', type=float, default=4.0,
                   help='memory the feature cache may take (auto mode)')
    d.add_argument('--cache-dir', default='',
                   help='also keep the cached features (each augmented view) in this folder, '
                        'keyed by weights, images and view, for other runs on the same images')
    add_augment_arguments(d)
    m = ap.add_argument_group('model')
    m.add_argument('--backbone', default='mobilenet_v2')
    m.add_argument('--pooling', choices=('gem', 'avg'), default='gem')
    m.add_argument('--gem-p', type=float, default=3.0)
    m.add_argument('--image-size', type=int, nargs=2, default=ModelSpec().image_size,
                   metavar=('H', 'W'), help="network input (default: the default model's, so a "
                   'trained model runs at the size the node runs)')
    m.add_argument('--train-blocks', type=int, default=2, help='trained last backbone blocks')
    m.add_argument('--no-pretrained', action='store_true', help='random init, not ImageNet')
    m.add_argument('--backbone-checkpoint', default='',
                   help='local torchvision classifier state_dict to start from')
    o = ap.add_argument_group('optimisation')
    o.add_argument('--loss', choices=('gcl', 'cl'), default='gcl')
    o.add_argument('--margin', type=float, default=DEFAULT_MARGIN, help='margin τ')
    o.add_argument('--epochs', type=int, default=30)
    o.add_argument('--batch-size', type=int, default=64, help='pairs per optimiser step')
    o.add_argument('--accum-steps', type=int, default=1,
                   help='split each step into this many micro-batches (less memory)')
    o.add_argument('--lr', type=float, default=None, help='default 0.1 for gcl, 0.01 for cl')
    o.add_argument('--momentum', type=float, default=0.9)
    o.add_argument('--weight-decay', type=float, default=0.0)
    o.add_argument('--lr-step', type=int, default=15, help='epochs between lr ÷ 10')
    o.add_argument('--lr-gamma', type=float, default=0.1)
    o.add_argument('--no-amp', action='store_true', help='no mixed precision on CUDA')
    o.add_argument('--seed', type=int, default=0)
    add_lowtex_arguments(o)
    r = ap.add_argument_group('run')
    r.add_argument('--out', required=True, help='output directory (checkpoints, logs)')
    r.add_argument('--resume', default='', help='checkpoint to resume from (default: the one '
                   'in --out, when there is one)')
    r.add_argument('--no-resume', action='store_true', help='ignore a checkpoint in --out')
    r.add_argument('--device', default='auto', help='auto, cpu or cuda')
    r.add_argument('--eval-batch', type=int, default=64)
    r.add_argument('--select-metric', choices=tuple(SELECT_METRICS), default=DEFAULT_SELECT_METRIC,
                   help='validation metric that picks best.pt (map: mAP@5); a tie keeps the '
                        'earlier epoch')
    r.add_argument('--no-initial-eval', action='store_true',
                   help='skip validating the untrained network (epoch 0 row)')
    r.add_argument('--no-progress', action='store_true')
    r.add_argument('--dump-pairs', action='store_true',
                   help='debug: every rank saves the pairs it trained on (pairs/*.npy)')
    add_fov_arguments(ap)
    return ap

