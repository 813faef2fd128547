"""
Thread pools of a process that runs the network beside the detector on a few CPU cores.

Two pools share the cores with torch's own (OpenMP) pool, and both spin when idle:
- torch's OpenMP workers busy-wait after each forward; `prefer_passive_omp` makes them sleep
  (OMP_WAIT_POLICY=PASSIVE, before torch starts its pool): a client on the same 2 cores ran
  at half speed beside an active-waiting node.
- numpy's OpenBLAS starts a worker per core, and after each matrix product its workers spin
  for a while before they sleep. The detector's products are small (the sequence evidence:
  about 24 history frames against a few hundred keyframes) and gain nothing from threads, but
  the spinning workers take a core from the next forward, which then waits for its slowest
  thread. `limit_blas_threads` sets every OpenBLAS loaded in the process (numpy's, and any
  other wheel's such as FAISS's) through its own `*_set_num_threads`, as threadpoolctl does,
  without a dependency. Measured with bench/bench_core.py (README, "Performance").

Values the user set in the environment (OMP_WAIT_POLICY, OPENBLAS_NUM_THREADS) win.
"""
import ctypes
import os

_SETTERS = ('scipy_openblas_set_num_threads64_', 'scipy_openblas_set_num_threads',
            'openblas_set_num_threads64_', 'openblas_set_num_threads')
_GETTERS = ('scipy_openblas_get_num_threads64_', 'scipy_openblas_get_num_threads',
            'openblas_get_num_threads64_', 'openblas_get_num_threads')


def _loaded_openblas() -> list[str]:
    """Paths of the OpenBLAS libraries mapped into this process (Linux; [] elsewhere)."""
    try:
        with open('/proc/self/maps', encoding='utf-8', errors='replace') as f:
            paths = {line.split(None, 5)[-1].strip() for line in f if 'openblas' in line.lower()}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith('/') and os.path.isfile(p))


def _call(path: str, names: tuple[str, ...], *args) -> int | None:
    """Call the first of `names` the library at `path` exports; None when it has none."""
    try:
        lib = ctypes.CDLL(path)  # already mapped: the same handle, nothing loaded anew
    except OSError:
        return None
    for name in names:
        fn = getattr(lib, name, None)
        if fn is not None:
            fn.restype = ctypes.c_int
            return int(fn(*(ctypes.c_int(a) for a in args)) or 0)
    return None


def blas_threads() -> dict[str, int]:
    """Threads of each loaded OpenBLAS, by library path (what the limit did)."""
    out = {}
    for path in _loaded_openblas():
        n = _call(path, _GETTERS)
        if n is not None:
            out[path] = n
    return out


def prefer_passive_omp() -> None:
    """OpenMP workers sleep when idle; effective before torch's first parallel region."""
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')


def limit_blas_threads(n: int = 1) -> int:
    """
    Set every loaded OpenBLAS to `n` threads; return how many libraries were set.

    0 when none is loaded (import numpy first), none exports the setter (another BLAS), or the
    user chose `OPENBLAS_NUM_THREADS` (left as it is).
    """
    if 'OPENBLAS_NUM_THREADS' in os.environ:
        return 0
    import numpy  # noqa: F401  (loads numpy's OpenBLAS, so there is one to set)
    done = 0
    for path in _loaded_openblas():
        if path in blas_threads():
            _call(path, _SETTERS, max(1, int(n)))
            done += 1
    return done
