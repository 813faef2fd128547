"""
Map maintenance for a fleet of robots: what `vpr-map` runs (info, merge, export, prune).

Every map is read through the map's own checked loader (storage.read_snapshot: CURRENT,
manifest, file sizes and sha256, FAISS headers, database values), never around it, and every
map written is a normal generation written by storage.save under the directory's lock, so a
node loads and continues it like any other. Nothing is written outside the output directory
(merge: `out`; prune: the map itself, as a new generation, crash-safe; export: the one file).

- `merge(a, b, out)`: two robots' (or two days') maps of the same model into one. Ids of `a`
  are kept; ids of `b` that `a` also has are given new ones past both maps' `next_id` (the
  mapping is returned and saved in `out/merge_record.json`); sessions are renumbered (b's after
  a's) and the manifest records where each came from (`sessions`: map name and its number
  there, carried over from maps that were merged before); feature blobs are copied, so
  geometric verification works on the merged map.
- `prune(dir, sessions=..., older_than_s=...)`: a new generation without those keyframes; ids
  and session numbers are never reused (next_id and session_count stay).
"""
import io
import json
import os
import time
from typing import Iterable, Optional

import numpy as np

from vpr_ros.core.atomic_io import write_atomic
from vpr_ros.core.errors import MapError, MapMismatchError
from vpr_ros.map import dir_lock, storage
from vpr_ros.map.blobs import BlobCopy
from vpr_ros.map.id_pool import MAX_ID, MAX_SESSIONS
from vpr_ros.map.index_kinds import all_vectors, new_index, new_state
from vpr_ros.map.kind_base import IndexParams
from vpr_ros.map.records import KeyframeTable

MERGE_RECORD = 'merge_record.json'
COLUMNS = ('ids', 'stamps_ns', 'poses', 'sessions', 'frame_ids', 'descriptors')


def read(directory: str, verify: bool = True) -> storage.Loaded:
    """Read the committed generation of `directory`, checked, any model; no lock, no write."""
    return storage.read_snapshot(os.path.abspath(directory), None, None, verify)


def columns(loaded: storage.Loaded) -> dict[str, np.ndarray]:
    """Every keyframe of a loaded generation as columns in id order (see COLUMNS)."""
    r = loaded.rows
    return {'ids': r.ids, 'stamps_ns': r.stamps, 'poses': r.poses, 'sessions': r.sessions,
            'frame_ids': np.array(r.frames, dtype=str).reshape(len(r.ids)),
            'descriptors': all_vectors(loaded.index, r.ids, loaded.manifest['dim'])}


def _tree_bytes(directory: str) -> int:
    total = 0
    for root, _, files in os.walk(directory, followlinks=False):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def info(directory: str, verify: bool = True) -> dict:
    """Describe a map: model, index, keyframes, sessions (count, span, origin), sizes."""
    directory = os.path.abspath(directory)
    loaded = read(directory, verify)
    man, r = loaded.manifest, loaded.rows
    sources = man.get('sessions', {})
    sessions = []
    for s in np.unique(r.sessions):
        st = r.stamps[r.sessions == s]
        sessions.append({'session': int(s), 'keyframes': int(len(st)),
                         'first_stamp_s': int(st.min()) / 1e9, 'last_stamp_s': int(st.max()) / 1e9,
                         'from': sources.get(str(int(s)))})
    aside = os.path.join(directory, 'aside')
    return {'directory': directory, 'generation': man['generation'],
            'fingerprint': man['fingerprint'], 'dim': man['dim'], 'index': man['index'],
            'keyframes': man['count'], 'next_id': man['next_id'],
            'session_count': man['session_count'], 'sessions': sessions,
            'keyframes_with_blobs': len(r.blob_ids), 'saved_unix_s': man.get('saved_unix_s'),
            'files': {k: v['size'] for k, v in man['files'].items()},
            'generation_bytes': sum(v['size'] for v in man['files'].values()),
            'directory_bytes': _tree_bytes(directory),
            'aside': sorted(n for n in os.listdir(aside) if not n.startswith('.'))
            if os.path.isdir(aside) and not os.path.islink(aside) else []}


def _write(directory: str, cols: dict, man: dict, next_id: int, session_count: int,
           sources: dict, blobs: BlobCopy) -> str:
    """Save rows (id order) as a new generation of `directory` under its lock; its path."""
    info_ = dict(man['index'])
    params = IndexParams.checked(info_['hnsw_m'], info_['hnsw_ef_construction'],
                                 info_['hnsw_ef_search'])
    index = new_index(man['dim'], info_['type'], params)
    if len(cols['ids']):
        index.add_with_ids(np.ascontiguousarray(cols['descriptors'], np.float32), cols['ids'])
    table = KeyframeTable()
    table.load(cols['ids'], cols['stamps_ns'], cols['poses'], cols['sessions'],
               [str(f) for f in cols['frame_ids']])
    snap = storage.Snapshot(index, table, blobs, man['fingerprint'], man['dim'], next_id,
                            session_count, info_, new_state(info_['type'], params, index),
                            sources)
    handle = dir_lock.acquire(directory, create=True)
    try:
        return storage.save(directory, snap, lambda stage: None)
    except OSError as exc:
        raise MapError(f'writing the map to {directory} failed: {exc}') from exc
    finally:
        handle.release()


def _origin(man: dict, session: int, name: str) -> dict:
    """Where a session came from: the map's own record (merged before), else this map."""
    return dict(man.get('sessions', {}).get(str(session)) or {'source': name,
                                                              'session': session})


def _merge_names(a: str, b: str, names: Optional[Iterable[str]]) -> tuple[str, str]:
    na, nb = (list(names) if names is not None else
              [os.path.basename(a), os.path.basename(b)])
    if na == nb:
        na, nb = (f'{os.path.basename(os.path.dirname(p))}/{n}' for p, n in ((a, na), (b, nb)))
    if not na or not nb or na == nb or max(len(na), len(nb)) > 256:
        raise MapError(f'map names {na!r} and {nb!r} must differ (at most 256 characters)')
    return na, nb


def merge(a: str, b: str, out: str, names: Optional[Iterable[str]] = None,
          verify: bool = True) -> dict:
    """Merge maps `a` and `b` of one model into a new map in `out` (see the module docstring)."""
    a, b, out = (os.path.abspath(p) for p in (a, b, out))
    if out in (a, b):
        raise MapError(f'the output {out} is one of the maps merged; merge writes a new map')
    if storage.map_exists(out):
        raise MapError(f'{out} already holds a map; merge writes a new map into an empty or '
                       'new directory')
    la, lb = read(a, verify), read(b, verify)
    ma, mb = la.manifest, lb.manifest
    if (ma['fingerprint'], ma['dim']) != (mb['fingerprint'], mb['dim']):
        raise MapMismatchError(
            f'cannot merge maps of different models: {a} has model {ma["fingerprint"]} '
            f'(dim {ma["dim"]}), {b} has {mb["fingerprint"]} (dim {mb["dim"]}); their '
            'descriptors cannot be compared')
    na, nb = _merge_names(a, b, names)
    ca, cb = columns(la), columns(lb)
    collide = np.isin(cb['ids'], ca['ids'])
    start = max(ma['next_id'], mb['next_id'])
    new_b = cb['ids'].copy()
    new_b[collide] = start + np.arange(int(collide.sum()))
    next_id = start + int(collide.sum())
    session_count = ma['session_count'] + mb['session_count']
    if next_id > MAX_ID or session_count > MAX_SESSIONS:
        raise MapError(f'the merged map would exceed {MAX_ID} ids or {MAX_SESSIONS} sessions')
    cb = dict(cb, ids=new_b, sessions=cb['sessions'] + ma['session_count'])
    order = np.argsort(np.concatenate([ca['ids'], cb['ids']]), kind='stable')
    cols = {k: np.concatenate([ca[k], cb[k]])[order] for k in COLUMNS}
    sources = {str(s): _origin(ma, s, na) for s in range(ma['session_count'])}
    sources.update({str(s + ma['session_count']): _origin(mb, s, nb)
                    for s in range(mb['session_count'])})
    remap = dict(zip(lb.rows.ids.tolist(), new_b.tolist()))
    blobs = BlobCopy()
    blobs.add(la.db_path, la.rows.blob_ids, la.rows.blob_ids)
    blobs.add(lb.db_path, lb.rows.blob_ids, [remap[i] for i in lb.rows.blob_ids])
    gen = _write(out, cols, ma, next_id, session_count, sources, blobs)
    record = {'merged_unix_s': time.time(), 'generation': os.path.basename(gen),
              'maps': [{'name': na, 'directory': a, 'generation': ma['generation'],
                        'keyframes': ma['count'], 'session_offset': 0},
                       {'name': nb, 'directory': b, 'generation': mb['generation'],
                        'keyframes': mb['count'], 'session_offset': ma['session_count']}],
              'sessions': sources, 'keyframes': int(len(cols['ids'])),
              'remapped_ids': {nb: [[int(o), int(n)] for o, n in
                                    zip(lb.rows.ids[collide], new_b[collide])]}}
    write_atomic(os.path.join(out, MERGE_RECORD), json.dumps(record, indent=1).encode())
    return record


def export_npz(directory: str, out_path: str, verify: bool = True) -> dict:
    """Write the map's columns (COLUMNS, plus model and session origins) to one .npz file."""
    out_path = os.path.abspath(out_path)
    if os.path.isdir(out_path):
        raise MapError(f'{out_path} is a directory; export writes one .npz file')
    loaded = read(directory, verify)
    man = loaded.manifest
    arrays = dict(columns(loaded), fingerprint=np.array(man['fingerprint']),
                  dim=np.array(man['dim']), session_sources=np.array(
                      json.dumps(man.get('sessions', {}))))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_atomic(out_path, buf.getvalue())
    return {'file': out_path, 'keyframes': man['count'], 'dim': man['dim'],
            'bytes': len(buf.getvalue())}


def prune(directory: str, sessions: Iterable[int] = (), older_than_s: Optional[float] = None,
          now_s: Optional[float] = None, dry_run: bool = False, verify: bool = True) -> dict:
    """
    Remove the keyframes of `sessions` and those stamped over `older_than_s` before `now_s`.

    Held under the directory's lock (a running node's map is refused: MapLockedError); the
    result is a new generation, committed atomically, so a crash leaves the old map or the new.
    """
    directory = os.path.abspath(directory)
    handle = dir_lock.acquire(directory, create=False)
    try:
        loaded = storage.read_checked(directory, None, None, verify)
        man, r = loaded.manifest, loaded.rows
        drop = np.isin(r.sessions, [int(s) for s in sessions])
        if older_than_s is not None:
            now = time.time() if now_s is None else now_s
            drop |= r.stamps < int((now - older_than_s) * 1e9)
        report = {'directory': directory, 'removed': int(drop.sum()),
                  'kept': int((~drop).sum()), 'removed_by_session': {
                      int(s): int(((r.sessions == s) & drop).sum())
                      for s in np.unique(r.sessions[drop])}, 'generation': man['generation']}
        if dry_run or not drop.any():
            return report
        cols = {k: v[~drop] for k, v in columns(loaded).items()}
        kept = set(cols['ids'].tolist())
        keep_blobs = [i for i in r.blob_ids if i in kept]
        blobs = BlobCopy()
        blobs.add(loaded.db_path, keep_blobs, keep_blobs)
        gen = _write(directory, cols, man, man['next_id'], man['session_count'],
                     man.get('sessions', {}), blobs)
        report['generation'] = os.path.basename(gen)
        return report
    finally:
        handle.release()
