"""
The report of `vpr-eval --loop`: the console table, loop_results.json and the PR curve PNG.

Kept apart from the loop evaluation (training/eval/loop_mode.py), as eval_report is for vpr-eval.
"""
import os


def format_loop_table(report: dict) -> str:
    """
    Format the console table of a loop report, one row per model.

    R@1 (single frame, sequence), recall at the target precision of the previous rule (single
    frame) and of the new one (both fitted), and what the node's own point does.
    """
    ds = report['dataset']
    p = f'P{report["target_precision"]:g}'
    lines = [f'loop: {ds["source"]}: {ds["n_frames"]} frames, {ds["gated"]} gated, '
             f'exclusion {ds["exclusion"]}, ground truth {ds["ground_truth"]["rule"]}',
             f'{"model":<26} {"revisits":>8} {"R@1":>6} {"R@1seq":>6} {"rec@" + p + " old":>11} '
             f'{"rec@" + p + " new":>11} {"node: prec":>10} {"recall":>6}  point (new)']
    for r in report['rows']:
        old, new, at = r['operating_point_single'], r['operating_point'], r['at_point']
        inl = '-' if new['min_inliers'] is None else str(new['min_inliers'])
        conf = new.get('confidence_threshold')
        lines.append(f'{r["name"][:26]:<26} {r["n_revisit"]:>8} {r["recall_at_1"]:>6.3f} '
                     f'{r["recall_at_1_sequence"]:>6.3f} {old["recall"]:>11.3f} '
                     f'{new["recall"]:>11.3f} {at["precision"]:>10.3f} {at["recall"]:>6.3f}  '
                     f'score {new["score_threshold"]:.4f} inl {inl} conf '
                     f'{"-" if conf is None else f"{conf:.4f}"}')
    return '\n'.join(lines)


def write_loop_report(report: dict, out_dir: str) -> dict:
    """Write loop_results.json and the precision-recall PNG with each operating point."""
    import json

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from vpr_ros.core.atomic_io import write_atomic
    os.makedirs(out_dir, exist_ok=True)
    files = {'json': os.path.join(out_dir, 'loop_results.json'),
             'pr_png': os.path.join(out_dir, 'loop_precision_recall.png')}
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in report['rows']:
        c, op = r['pr_curve'], r['operating_point_single']
        line, = ax.plot(c['recall'], c['precision'], label=f'{r["name"]} (R@1 '
                        f'{r["recall_at_1"]:.2f})')
        ax.plot([op['recall']], [op['precision']], marker='o', color=line.get_color())
        ax.annotate(f'{op["score_threshold"]:.3f}', (op['recall'], op['precision']),
                    fontsize=7, xytext=(3, -10), textcoords='offset points')
    ax.set_xlabel('recall (frames that can close a loop)')
    ax.set_ylabel('precision (best single-frame candidate)')
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f'Loop closures, {report["dataset"]["source"]}'[:90], fontsize=9)
    ax.legend(fontsize=8, loc='lower left')
    fig.tight_layout()
    fig.savefig(files['pr_png'], dpi=110)
    plt.close(fig)
    write_atomic(files['json'], json.dumps({**report, 'files': files}, indent=1).encode())
    return files
