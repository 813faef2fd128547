"""
Headless pyrender on CPU (OSMesa): the one place that works around pyrender's known snags.

Everything in `vpr_ros.sim` gets pyrender from `import_pyrender()` so the three fixes below are
applied once, before pyrender is imported, whoever imports first:

1. pyrender pins PyOpenGL 3.1.0, whose OSMesa binding cannot create a context
   (OSMesaCreateContextAttribs is missing). requirements-post.txt installs 3.1.10 after pyrender
   with --no-deps; `_check_pyopengl` fails early with that explanation instead of an obscure
   ctypes error deep in pyrender.
2. pyrender 0.1.45 uses `np.infty`, removed in numpy 2: the alias is restored.
3. With PyOpenGL 3.1.10 under OSMesa, `OpenGL.contextdata.getContext()` returns a new ctypes
   pointer object per call. pyrender keys its shader cache on that object, so every frame misses
   and recompiles every shader (190-500 ms a frame instead of ~10-20 ms), and PyOpenGL's
   per-context storage grows without bound. `_stable_get_context` returns the context's address
   (an int) instead: equal for the same OSMesa context, different for different contexts.

Not worked around, because it cannot be from here: OSMesa's llvmpipe loads its own LLVM, and
so does triton, which torch imports with torchvision. Rendering first and importing torchvision
after, in one process, crashed with a segmentation fault (the other order works). Code that
trains or embeds renders in a child process (`vpr-sim`, as `vpr-train-demo` does).
"""
import ctypes
import os
import threading

import numpy as np

# Oldest PyOpenGL whose OSMesa binding creates core-profile contexts (snag 1).
_MIN_PYOPENGL = (3, 1, 5)
_LOCK = threading.Lock()
_PYRENDER = None


class RenderBackendError(RuntimeError):
    """Headless rendering is not available (missing OSMesa or an unusable PyOpenGL)."""


def _version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split('.'):
        digits = ''.join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def _check_pyopengl() -> None:
    """Snag 1: refuse PyOpenGL 3.1.0 (pyrender's pin) with the fix in the message."""
    import OpenGL
    if _version_tuple(OpenGL.__version__) < _MIN_PYOPENGL:
        raise RenderBackendError(
            f'PyOpenGL {OpenGL.__version__} cannot create an OSMesa context; pyrender pins 3.1.0, '
            'install PyOpenGL==3.1.10 after it (pip install --no-deps -r requirements-post.txt)')


def _stable_get_context(context=None):
    """Snag 3: the current context's address, so cache keys stay equal across calls."""
    from OpenGL import platform
    if context is None:
        context = platform.GetCurrentContext()
        if not context:
            from OpenGL import error
            raise error.Error('Attempt to retrieve context when no valid context')
    if isinstance(context, int):
        return context
    try:
        return ctypes.cast(context, ctypes.c_void_p).value or context
    except (TypeError, ctypes.ArgumentError):
        return context


def import_pyrender():
    """
    Return the pyrender module, set up for headless OSMesa rendering.

    PYOPENGL_PLATFORM must be chosen before PyOpenGL is first imported, so it is set here (unless
    the caller chose another platform, e.g. egl on a GPU machine).
    """
    global _PYRENDER
    with _LOCK:
        if _PYRENDER is not None:
            return _PYRENDER
        os.environ.setdefault('PYOPENGL_PLATFORM', 'osmesa')
        if not hasattr(np, 'infty'):  # snag 2
            np.infty = np.inf
        _check_pyopengl()
        import OpenGL.contextdata
        try:
            import pyrender
        except ImportError as exc:
            raise RenderBackendError(
                f'pyrender cannot load ({exc}); headless rendering needs Debian libosmesa6 '
                '(apt-get install libosmesa6) and PYOPENGL_PLATFORM=osmesa') from exc
        if os.environ.get('PYOPENGL_PLATFORM') == 'osmesa':
            OpenGL.contextdata.getContext = _stable_get_context  # snag 3
        _PYRENDER = pyrender
        return pyrender


class Renderer:
    """
    An offscreen renderer of one image size: colour (HxWx3 uint8) and metric depth (HxW float32).

    Wraps pyrender.OffscreenRenderer so callers never touch GL state; depth is 0 where nothing
    was hit (the sky), which the fog and sky passes rely on.
    """

    def __init__(self, width: int, height: int):
        pr = import_pyrender()
        if width < 8 or height < 8:
            raise ValueError(f'image size {width}x{height} is too small')
        self.width = int(width)
        self.height = int(height)
        try:
            self._r = pr.OffscreenRenderer(self.width, self.height)
        except Exception as exc:  # GL and ctypes raise many unrelated types
            raise RenderBackendError(f'cannot create an OSMesa context: {exc}') from exc

    def render(self, scene) -> tuple[np.ndarray, np.ndarray]:
        color, depth = self._r.render(scene)
        return np.ascontiguousarray(color[..., :3]), depth.astype(np.float32, copy=False)

    def close(self) -> None:
        if self._r is not None:
            self._r.delete()
            self._r = None

    def __enter__(self) -> 'Renderer':
        return self

    def __exit__(self, *exc) -> None:
        self.close()
