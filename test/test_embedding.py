"""
training.eval.embedding: one descriptor cache and one model list for vpr-eval and its loop mode.

Issue 18: the loop mode borrowed evaluate's private `_load`, `_resolve_models` and `_cache_*`;
both now go through this public module (the loop mode reads images and resolves models here,
and embeds each frame by itself, as the node does).
"""
import os

import numpy as np
from PIL import Image
import pytest

from vpr_ros.training.eval.embedding import (
    DEFAULT_MODEL_NAME,
    DescriptorCache,
    embed_paths,
    file_key,
    IN_MEMORY,
    read_rgb,
    resolve_models,
)


class CountingEncoder:
    """A fixed, fast 'model' (8x8 grey thumbnail) that counts the images it embeds."""

    dim = 64

    def __init__(self, fingerprint: str = 'counting') -> None:
        self.fingerprint = fingerprint
        self.embedded = 0

    def embed(self, images, encoding='rgb8'):
        self.embedded += len(images)
        out = []
        for im in images:
            g = np.asarray(im, dtype=np.float32).mean(axis=2)
            d = g.reshape(8, g.shape[0] // 8, 8, g.shape[1] // 8).mean(axis=(1, 3)).ravel()
            d = d - d.mean()
            out.append(d / (np.linalg.norm(d) + 1e-9))
        return np.stack(out).astype(np.float32)


def _image(path: str, seed: int) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray(np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((4, 4, 1))).astype(
        np.uint8)).save(path)
    return path


@pytest.fixture()
def images(tmp_path) -> list[str]:
    paths = [_image(str(tmp_path / f'{i}.png'), i) for i in range(4)]
    bad = tmp_path / 'broken.png'
    bad.write_bytes(b'\x89PNG\r\n\x1a\nnot really')
    return paths + [str(bad)]


def test_unreadable_files_are_skipped_and_named(images):
    enc = CountingEncoder()
    desc, ok, errors = embed_paths(enc, images, batch_size=2, progress=False)
    assert ok.tolist() == [True] * 4 + [False] and desc.shape == (5, 64)
    assert not desc[4].any() and len(errors) == 1 and 'broken.png' in errors[0]
    with pytest.raises(ValueError):
        read_rgb(images[4])
    assert read_rgb(images[0]).shape == (32, 32, 3)


def test_the_cache_embeds_each_file_once_and_a_changed_file_again(images, tmp_path):
    cache_dir = str(tmp_path / 'cache')
    enc = CountingEncoder()
    first = DescriptorCache.for_model(cache_dir, enc)
    desc, ok, _ = embed_paths(enc, images, progress=False, cache=first.entries)
    assert first.n_added == 4 and first.save() and not first.save()  # written once
    again = DescriptorCache.for_model(cache_dir, enc)
    assert again.path == first.path and again.n_loaded == 4
    desc2, ok2, _ = embed_paths(enc, images, progress=False, cache=again.entries)
    assert enc.embedded == 4 and np.array_equal(desc, desc2) and (ok == ok2).all()
    old_key = file_key(images[1])
    _image(images[1], 99)                               # a new picture under the same name
    os.utime(images[1], ns=(1, 1))
    assert file_key(images[1]) != old_key
    embed_paths(enc, images, progress=False, cache=again.entries)
    assert enc.embedded == 5 and again.n_added == 1


def test_what_is_never_cached(tmp_path):
    assert DescriptorCache.for_model(None, CountingEncoder()).entries is None
    assert DescriptorCache.for_model(str(tmp_path), CountingEncoder('')).entries is None
    assert DescriptorCache.for_model(str(tmp_path), CountingEncoder(), IN_MEMORY).entries is None
    broken = DescriptorCache.for_model(str(tmp_path), CountingEncoder('x/y'))
    assert os.path.dirname(broken.path) == str(tmp_path) and broken.entries == {}
    with open(broken.path, 'wb') as f:
        f.write(b'not an npz')
    assert DescriptorCache.for_model(str(tmp_path), CountingEncoder('x/y')).entries == {}


def test_model_rows_are_unique_and_objects_are_not_cached():
    enc = CountingEncoder()
    rows = resolve_models([('a', enc), ('a', enc), enc], include_default=False, device='cpu')
    assert [r[0] for r in rows] == ['a', 'a#2', 'model2']
    assert [r[1] for r in rows] == ['<a>', '<a>', IN_MEMORY]
    assert DEFAULT_MODEL_NAME == 'imagenet-mobilenetv2-gem'


def test_the_loop_mode_embeds_each_frame_as_the_node_does(tmp_path):
    """
    vpr-eval caches batched descriptors; its loop mode replays the node, one forward a frame.

    The loop mode decides what the node decides, so it never takes a descriptor from the
    batch cache (a batched forward may differ in the last bits): each frame is embedded once,
    by itself.
    """
    from vpr_ros.training.eval.evaluate import evaluate
    from vpr_ros.training.eval.loop_mode import evaluate_loop

    folder = tmp_path / 'pair'
    for sub in ('ref', 'query'):
        os.makedirs(folder / sub)
    rows = ['query,ref']
    for i in range(6):
        _image(str(folder / 'ref' / f'{i}.png'), i)
        _image(str(folder / 'query' / f'{i}.png'), i)
        rows.append(f'query/{i}.png,ref/{i}.png')
    (folder / 'ground_truth.csv').write_text('\n'.join(rows) + '\n')
    cache_dir = str(tmp_path / 'cache')
    enc = CountingEncoder('shared')
    evaluate(folder=str(folder), models=[('shared', enc)], include_default=False,
             cache_dir=cache_dir, progress=False, verbose=False)
    assert enc.embedded == 12
    report = evaluate_loop(folder=str(folder), models=[('shared', enc)], include_default=False,
                           exclusion_frames=2, gate=False, cache_dir=cache_dir,
                           progress=False, verbose=False)
    assert enc.embedded == 24 and report['rows'][0]['n_queries'] > 0
