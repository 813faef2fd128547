"""
Which epoch `vpr-train` keeps as ``best.pt``: the one with the highest validation metric chosen.

R@1 by default: R@5 saturates on small validation sets, and picking by R@5 (R@1 only breaking
ties) once kept a CL run's R@1 0.825 over an earlier epoch's 0.864. A tie keeps the earlier
epoch (a later epoch must be strictly better), so more training never replaces an equal model.
"""
import math

# --select-metric name -> the key of training.fit.train_data.ValSet.evaluate's result
SELECT_METRICS = {'r1': 'r1', 'r5': 'r5', 'r10': 'r10', 'map': 'map5'}
DEFAULT_SELECT_METRIC = 'r1'


def metric_value(row: dict, metric: str) -> float | None:
    """Return the row's value of the chosen metric; None when not validated or NaN."""
    v = row.get(SELECT_METRICS[metric])
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


def best_from_history(history: list[dict], metric: str) -> dict:
    """Recompute the best trained epoch (epoch >= 1) of a history by the chosen metric."""
    best = {'metric': metric, 'value': None, 'epoch': None}
    for row in history:
        if int(row.get('epoch') or 0) >= 1:
            best = update_best(best, row, metric)[0]
    return best


def update_best(best: dict, row: dict, metric: str) -> tuple[dict, bool]:
    """
    Return (new best, improved) after an epoch's validation row.

    A row without the metric (no validation) replaces the best only when there is none yet, so
    a run without validation keeps its last epoch, as before.
    """
    value = metric_value(row, metric)
    old = best.get('value') if best.get('metric') == metric else None
    if value is None:
        improved = old is None
    else:
        improved = old is None or value > old
    if not improved:
        return best, False
    new = {'metric': metric, 'value': value, 'epoch': int(row['epoch'])}
    new.update({k: row.get(k) for k in ('r1', 'r5', 'r10', 'map5') if k in row})
    return new, True
