"""
Descriptors of image files for evaluation: reading, batching, the per-model cache, the models.

One home for what `vpr-eval`, its loop mode, `vpr-export --calibrate-loop` and the benchmarks
share, so every evaluation reads images the same way (unreadable files skipped and counted,
never fatal), keys its cache the same way (a changed file is embedded again) and names its
models the same way (the ImageNet default first, unique row names). The loop mode replays the
node and embeds each frame by itself, so it reads images and models here but not the cache.
"""
import io
import os
from typing import Any, Optional, Sequence

import numpy as np
from tqdm import tqdm

from vpr_ros.core.atomic_io import write_atomic

DEFAULT_MODEL_NAME = 'imagenet-mobilenetv2-gem'
#: The source of a model given as an object (not a file): its descriptors are never cached.
IN_MEMORY = '<in-memory>'


def read_rgb(path: str) -> np.ndarray:
    """HxWx3 uint8 RGB of an image file; ValueError when it is missing or unreadable."""
    from vpr_ros.training.data.dataset import load_image
    img = load_image(path)
    if img is None:
        raise ValueError(f'cannot read {path}')
    return img


def file_key(path: str) -> str:
    """Cache key of an image file: a changed file (size or mtime) is embedded again."""
    st = os.stat(path)
    return f'{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}'


class DescriptorCache:
    """
    One model's descriptors by `file_key`, in ``CACHE_DIR/desc_<fingerprint>.npz``.

    Only models with a fingerprint (a file hash) are cached: a network held in memory changes.
    A missing or broken file is an empty cache; `save` writes atomically, only when it grew.
    ``entries`` is None when nothing is cached (no folder, no fingerprint, an in-memory net).
    """

    def __init__(self, path: Optional[str]) -> None:
        self.path = path
        self.entries: Optional[dict[str, np.ndarray]] = self._read(path) if path else None
        self.n_loaded = len(self.entries) if self.entries is not None else 0

    @classmethod
    def for_model(cls, cache_dir: Optional[str], encoder, source: str = ''
                  ) -> 'DescriptorCache':
        """Open the cache of one model (a disabled cache without dir or fingerprint)."""
        fp = str(getattr(encoder, 'fingerprint', '') or '')
        if not cache_dir or not fp or source == IN_MEMORY:
            return cls(None)
        safe = ''.join(c if c.isalnum() or c in '-_.' else '_' for c in fp)
        return cls(os.path.join(cache_dir, f'desc_{safe[:120]}.npz'))

    @property
    def n_added(self) -> int:
        """Descriptors added since the file was read."""
        return len(self.entries) - self.n_loaded if self.entries is not None else 0

    @staticmethod
    def _read(path: str) -> dict[str, np.ndarray]:
        try:
            with np.load(path, allow_pickle=False) as z:
                return {str(k): d for k, d in zip(z['keys'], z['descs'])}
        except (OSError, KeyError, ValueError):
            return {}

    def save(self) -> bool:
        """Write the file when descriptors were added; True when it was written."""
        if self.path is None or not self.n_added:
            return False
        buffer = io.BytesIO()
        np.savez(buffer, keys=np.array(list(self.entries), dtype=str),
                 descs=np.stack(list(self.entries.values())).astype(np.float32))
        write_atomic(self.path, buffer.getvalue())
        self.n_loaded = len(self.entries)
        return True


def embed_paths(encoder, paths: Sequence[str], batch_size: int = 32, desc: str = 'embed',
                progress: bool = True, cache: Optional[dict] = None
                ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """
    Descriptors of image files; unreadable files give a zero row, a False in the mask, a note.

    Skipping instead of raising keeps one corrupt file from voiding a long evaluation. With a
    ``cache`` dict (file key → descriptor, one per model, `DescriptorCache.entries`) files seen
    before are not embedded again and new ones are added to it.
    """
    descs: list[Optional[np.ndarray]] = [None] * len(paths)
    errors: list[str] = []
    bar = tqdm(total=len(paths), desc=desc, unit='img', disable=not progress, leave=False)
    for s in range(0, len(paths), batch_size):
        imgs, idx = [], []
        for i in range(s, min(s + batch_size, len(paths))):
            if cache is not None:
                try:
                    hit = cache.get(file_key(paths[i]))
                except OSError:
                    hit = None
                if hit is not None:
                    descs[i] = hit
                    continue
            try:
                imgs.append(read_rgb(paths[i]))
                idx.append(i)
            except Exception as exc:  # noqa: BLE001 - corrupt or missing file: skip, count
                errors.append(f'{paths[i]}: {type(exc).__name__}: {exc}')
        if imgs:
            out = np.asarray(encoder.embed(imgs, 'rgb8'), dtype=np.float32)
            for i, d in zip(idx, out):
                descs[i] = d
                if cache is not None:
                    cache[file_key(paths[i])] = d
        bar.update(min(s + batch_size, len(paths)) - s)
    bar.close()
    ok = np.array([d is not None for d in descs], dtype=bool)
    dim = next((len(d) for d in descs if d is not None), int(getattr(encoder, 'dim', 1)))
    arr = np.zeros((len(paths), dim), np.float32)
    if ok.any():
        arr[ok] = np.stack([d for d in descs if d is not None])
    return arr, ok, errors


def resolve_models(models: Sequence[Any], include_default: bool, device: str,
                   image_size: Optional[Sequence[int]] = None) -> list[tuple[str, str, Any]]:
    """
    (row name, source, encoder) per model; str paths are loaded, encoders used as they are.

    ``models`` holds model file paths, ``Encoder`` objects or ``(name, encoder)`` pairs; the
    ImageNet default comes first with ``include_default``. Row names are unique even for two
    files called model.pt.
    """
    def build_encoder(path: str, device: str):
        from vpr_ros.model.encoder import (
            build_encoder as build,  # torch only when a file is asked for
        )
        return build(path, device=device, image_size=image_size)

    items: list[tuple[str, str, Any]] = []
    if include_default:
        items.append((DEFAULT_MODEL_NAME, '', build_encoder('', device=device)))
    for i, m in enumerate(models):
        if isinstance(m, (tuple, list)) and len(m) == 2:
            name, enc = m
            items.append((str(name), f'<{name}>', enc))
        elif isinstance(m, (str, os.PathLike)):
            path = os.fspath(m)
            name = os.path.splitext(os.path.basename(path))[0] or f'model{i}'
            items.append((name, path, build_encoder(path, device=device)))
        else:
            items.append((str(getattr(m, 'name', f'model{i}')), IN_MEMORY, m))
    seen: dict[str, int] = {}
    out = []
    for name, src, enc in items:
        seen[name] = seen.get(name, 0) + 1
        out.append((name if seen[name] == 1 else f'{name}#{seen[name]}', src, enc))
    return out
