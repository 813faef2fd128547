"""
`vpr-eval` of several models on one set, with bootstrap 95 % intervals per model and metric.

The same data loading, descriptor cache, ground truth and metrics as `training.eval.evaluate`
(its report JSON and PNGs are written as vpr-eval writes them); on top, each row gets ``ci``:
the paired query bootstrap of `training.eval.bootstrap_ci`, seeded, so a rerun gives the same
intervals.
"""
import os
from typing import Optional, Sequence

from vpr_ros.core.fov import DEFAULT_FOV_DEG, DEFAULT_RADIUS_M
from vpr_ros.core.metrics import DEFAULT_KS
from vpr_ros.core.psi import POSITIVE_PSI
from vpr_ros.training.eval.bootstrap_ci import bootstrap, DEFAULT_BOOT, per_query_terms


def evaluate_with_ci(models: Sequence[tuple[str, str]], map_indexes: Sequence[str] = (),
                     query_indexes: Sequence[str] = (), folder: Optional[str] = None,
                     out_dir: Optional[str] = None, cache_dir: Optional[str] = None,
                     progress: bool = True, n_boot: int = DEFAULT_BOOT, seed: int = 0,
                     device: str = 'auto') -> dict:
    """
    Evaluate (name, model path) pairs ('' = the built-in ImageNet model) on one set.

    Returns vpr-eval's report (rows in the order given, named as given) with ``ci`` per row.
    """
    import time

    from vpr_ros.model.encoder import build_encoder
    from vpr_ros.training.eval import evaluate as ev
    from vpr_ros.training.eval.eval_report import write_report

    t0 = time.monotonic()
    data = ev.load_dataset(map_indexes, query_indexes, folder, None)
    encoders = [(name, path, build_encoder(path, device=device)) for name, path in models]
    emb = ev.embed_all(encoders, data, 32, progress, cache_dir)
    m_keep, q_keep = emb['m_keep'], emb['q_keep']
    positives, hit_desc = ev.ground_truth(data, m_keep, q_keep, 'psi', None, folder,
                                          POSITIVE_PSI, DEFAULT_FOV_DEG, DEFAULT_RADIUS_M, 2.0)
    rows = ev.score_rows(encoders, emb, positives, DEFAULT_KS, None)
    terms = [per_query_terms(qd[q_keep], md[m_keep], positives) for md, qd in emb['embedded']]
    for row, ci in zip(rows, bootstrap(terms, n_boot=n_boot, seed=seed)):
        row['ci'] = ci
    report = {
        'dataset': ev.dataset_summary(data, folder, map_indexes, query_indexes, emb, hit_desc),
        'ks': list(DEFAULT_KS), 'cache': {'dir': cache_dir, 'hits': emb['cache_hits']},
        'rows': rows, 'bootstrap': {'n_boot': n_boot, 'seed': seed, 'resampled': 'queries'},
        'seconds': round(time.monotonic() - t0, 2),
    }
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        report['files'] = write_report(report, out_dir)
    return report
