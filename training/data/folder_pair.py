"""
Reference/query folder pairs (VPR-Bench layout): ``DIR/ref``, ``DIR/query``, a ground-truth CSV.

Read in one place for `vpr-eval --folder` and for the folder played as a loop (`vpr-eval
--loop-folder`, `vpr-export --calibrate-loop-folder`), so both see the same images and the same
correct references.
"""
import csv
import os
from typing import Optional

#: Image files a folder pair may hold (by extension, case-insensitive).
IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm', '.tif', '.tiff', '.webp')


def is_image_name(name: str) -> bool:
    """Tell whether a file name has an image extension (the CSV header is not one)."""
    return name.strip().lower().endswith(IMAGE_EXTS)


def read_folder_pair(folder: str, gt_csv: Optional[str] = None,
                     ref_sub: str = 'ref', query_sub: str = 'query'
                     ) -> tuple[list[str], list[str], list[list[str]]]:
    """
    Map images (every image in ``ref/``), queries and their correct references from a CSV.

    The CSV has a header and rows ``query_path,ref_path;ref_path;...`` relative to ``folder``
    (the layout of the corridor set). Returns absolute map paths, query paths, and per query
    the absolute paths of its correct references.
    """
    folder = os.path.abspath(folder)
    gt_csv = gt_csv or os.path.join(folder, 'ground_truth.csv')
    ref_dir = os.path.join(folder, ref_sub)
    if not os.path.isdir(ref_dir):
        raise FileNotFoundError(f'no {ref_sub}/ folder in {folder}')
    map_paths = sorted(os.path.join(ref_dir, f) for f in os.listdir(ref_dir)
                       if f.lower().endswith(IMAGE_EXTS))
    query_paths, refs = [], []
    with open(gt_csv, newline='') as f:
        rows = list(csv.reader(f))
    for row in rows[1:] if rows and not is_image_name(rows[0][0]) else rows:
        if not row or not row[0].strip():
            continue
        query_paths.append(os.path.join(folder, row[0].strip()))
        cell = row[1] if len(row) > 1 else ''
        refs.append([os.path.join(folder, r.strip()) for r in cell.split(';') if r.strip()])
    if not query_paths:
        raise ValueError(f'{gt_csv} lists no query')
    return map_paths, query_paths, refs
