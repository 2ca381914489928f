"""JIT machinery in one place: decorators, cache fallback, threading layer.

Kernels elsewhere in this package are plain loops; everything about how they
are compiled and run (caching, parallel layer, locks) lives here.
"""
from __future__ import annotations

import glob
import hashlib
import os
import threading
import warnings

import numba

# error_model="numpy": the default "python" model adds a zero-division check
# to every '/' and that branch blocks LLVM's loop vectoriser.
_OPTS = dict(error_model="numpy", nogil=True)


_HERE = os.path.dirname(os.path.abspath(__file__))


def _package_stamp():
    """One hash of every source file of this package.

    numba keys a cached kernel on its own file only, so an edit to the shared
    math in ``_math.py`` would silently load stale machine code; kernels here
    are keyed on all of the package's sources instead.
    """
    h = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(_HERE, "*.py"))):
        with open(path, "rb") as f:
            h.update(f.read())
    return h.digest()


def _install_cache_locators():
    """Put package-wide-stamp variants of numba's locators first (numba
    internals: on any mismatch, keep numba's default behaviour)."""
    try:
        from numba.core import caching
    except ImportError:  # pragma: no cover
        return
    stamp = _package_stamp()
    ours = []
    for name in ("UserProvidedCacheLocator", "InTreeCacheLocator", "UserWideCacheLocator"):
        base = getattr(caching, name, None) or getattr(caching, "_" + name, None)
        if base is None or not hasattr(base, "get_source_stamp"):
            return

        def from_function(cls, py_func, py_file, _base=base):
            if os.path.dirname(os.path.abspath(py_file)) != _HERE:
                return None  # not ours: numba's own locators decide
            return _base.from_function.__func__(cls, py_func, py_file)

        ours.append(type("Fastloss" + name, (base,), {
            "get_source_stamp": lambda self: stamp,
            "from_function": classmethod(from_function),
        }))
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    if impl is None or not isinstance(getattr(impl, "_locator_classes", None), list):
        return
    if not any(c.__name__.startswith("Fastloss") for c in impl._locator_classes):
        impl._locator_classes[:0] = ours


_install_cache_locators()


def _cached(dispatcher_factory, fn):
    """Compile ``fn`` with ``cache=True``; without caching if that is impossible.

    numba raises at decoration time when no cache locator is usable (read-only
    package dir and no writable ``NUMBA_CACHE_DIR``): fall back to in-memory
    JIT rather than failing the import.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", numba.NumbaWarning)
            return dispatcher_factory(cache=True)(fn)
    except Exception:  # RuntimeError("cannot cache ..."), NumbaWarning
        return dispatcher_factory(cache=False)(fn)


def jit(fn):
    """Serial helper, inlined into callers by LLVM (not cached on its own)."""
    return numba.njit(**_OPTS)(fn)


def jit_fma(fn):
    """Polynomial helper: LLVM may fuse a*b + c into one FMA (fewer roundings,
    half the instructions); nothing else about IEEE semantics changes."""
    return numba.njit(fastmath={"contract"}, **_OPTS)(fn)


def jit_inline(fn):
    """Helper inlined at numba-IR level: constant arguments fold its branches."""
    return numba.njit(inline="always", **_OPTS)(fn)


def jit_reassoc(fn):
    """Helper whose additions LLVM may reassociate (compile-time fixed order)."""
    return numba.njit(fastmath={"reassoc"}, **_OPTS)(fn)


def kernel(fn):
    """Serial cached kernel."""
    return _cached(lambda **kw: numba.njit(**_OPTS, **kw), fn)


def parallel_kernel(fn):
    """Cached kernel whose ``prange`` loops run on numba's thread pool."""
    return _cached(lambda **kw: numba.njit(parallel=True, **_OPTS, **kw), fn)


# --------------------------------------------------------------------------
# threading layer: fork safety and thread safety
# --------------------------------------------------------------------------
def _choose_threading_layer():
    """Prefer a fork-safe layer unless the user (or someone earlier) chose.

    GNU OpenMP (numba's 'omp' on Linux) hangs a process that forks after a
    parallel region (PyTorch DataLoader workers).  'forksafe' makes numba take
    TBB when installed, else its own 'workqueue'.
    """
    from numba.np.ufunc import parallel

    if "NUMBA_THREADING_LAYER" in os.environ or parallel._is_initialized:
        return
    if str(numba.config.THREADING_LAYER).lower() == "default":
        numba.config.THREADING_LAYER = "forksafe"


_choose_threading_layer()
_run_lock = threading.Lock()


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NO_LOCK = _NoLock()


_chosen = []  # the lock, once the layer is known (it never changes in a process)


def run_lock():
    """A lock around parallel calls when the active layer is not thread-safe.

    numba's 'workqueue' aborts the process on concurrent launches from two
    Python threads; TBB and OpenMP are thread-safe and need no lock.  The
    answer is cached once the layer is initialised (asking costs ~0.6 us).
    """
    if _chosen:
        return _chosen[0]
    try:
        layer = numba.threading_layer()
    except ValueError:  # not initialised yet: first parallel call decides
        return _run_lock
    _chosen.append(_run_lock if layer == "workqueue" else _NO_LOCK)
    return _chosen[0]
