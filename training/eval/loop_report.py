"""
The report of `vpr-eval --loop`: the console table, loop_results.json and the PR curve PNG.

Kept apart from the loop evaluation (training/eval/loop_mode.py), as eval_report is for vpr-eval.
"""
import os


def format_loop_table(report: dict) -> str:
    """Console table: per model R@1 on revisits, recall at the target precision, thresholds."""
    ds = report['dataset']
    recall_head = f'recall@P{report["target_precision"]:g}'
    lines = [f'loop: {ds["source"]}: {ds["n_frames"]} frames, {ds["gated"]} gated '
             f'{ds["gate_reasons"] or ""}, exclusion {ds["exclusion"]}, '
             f'ground truth {ds["ground_truth"]["rule"]}',
             f'{"model":<28} {"revisits":>8} {"R@1":>6} {recall_head:>10} '
             f'{"threshold":>9} {"min_inl":>7}']
    for r in report['rows']:
        for key, tag in (('operating_point', ''), ('operating_point_verified', ' +verify')):
            if key not in r:
                continue
            op = r[key]
            r1 = r['recall_at_1_verified' if tag else 'recall_at_1']
            inl = '-' if op['min_inliers'] is None else str(op['min_inliers'])
            lines.append(f'{(r["name"] + tag)[:28]:<28} {r["n_revisit"]:>8} {r1:>6.3f} '
                         f'{op["recall"]:>10.3f} {op["score_threshold"]:>9.4f} {inl:>7}')
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
        c, op = r['pr_curve'], r['operating_point']
        line, = ax.plot(c['recall'], c['precision'], label=f'{r["name"]} (R@1 '
                        f'{r["recall_at_1"]:.2f})')
        ax.plot([op['recall']], [op['precision']], marker='o', color=line.get_color())
        ax.annotate(f'{op["score_threshold"]:.3f}', (op['recall'], op['precision']),
                    fontsize=7, xytext=(3, -10), textcoords='offset points')
    ax.set_xlabel('recall (frames that can close a loop)')
    ax.set_ylabel('precision (best candidate)')
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
