"""Backend registry and selection: explicit, inspectable, lazily imported.

A backend is a module exposing ``NAME``, ``elementwise(...)`` and
``softmax_rows(...)`` with the kernel interface documented in
:mod:`fastloss.reference`.  Kernels trust their inputs: all validation happens
once, in :mod:`fastloss._api`.

Selection (``backend=None``):

1. ``FASTLOSS_BACKEND`` names the default; like an explicit ``backend=``, it
   raises :class:`BackendUnavailable` when that backend cannot run here.
2. Otherwise the first available of :data:`AUTO_ORDER` is used, quietly
   skipping those that cannot run.

``FASTLOSS_DISABLE=numba,c`` hides backends (as if not installed): CI uses it
to exercise the fallbacks.
"""
from __future__ import annotations

import importlib
import os
import threading

#: every backend name, in the automatic preference order for host arrays
AUTO_ORDER = ("numba", "c", "numpy")
_MODULES = {
    "numba": "fastloss._numba",
    "c": "fastloss._c",
    "cuda": "fastloss._cuda",
    "numpy": "fastloss.reference",
}
BACKENDS = tuple(_MODULES)

_loaded: dict = {}
_errors: dict = {}
_lock = threading.Lock()


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run on this machine."""


_disabled_cache = ("", frozenset())


def _disabled():
    global _disabled_cache
    raw = os.environ.get("FASTLOSS_DISABLE", "")
    if raw != _disabled_cache[0]:  # parse once per distinct value: this is on every call's path
        _disabled_cache = (raw, frozenset(name.strip() for name in raw.split(",") if name.strip()))
    return _disabled_cache[1]


def load(name):
    """Import backend ``name``; raise :class:`BackendUnavailable` with the reason."""
    if name not in _MODULES:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))} or None; got {name!r}")
    if name in _disabled():
        raise BackendUnavailable(f"backend {name!r} is disabled by FASTLOSS_DISABLE")
    mod = _loaded.get(name)
    if mod is not None:
        return mod
    with _lock:
        if name in _errors:
            raise BackendUnavailable(_errors[name])
        try:
            mod = importlib.import_module(_MODULES[name])
            check = getattr(mod, "check_available", None)
            if check is not None:
                check()
        except Exception as exc:  # ImportError, missing driver, failed build...
            _errors[name] = f"backend {name!r} is not available: {type(exc).__name__}: {exc}"
            raise BackendUnavailable(_errors[name]) from exc
        _loaded[name] = mod
        return mod


def available_backends():
    """Names of the backends that can run here, in automatic preference order.

    Examples
    --------
    >>> import fastloss
    >>> "numpy" in fastloss.available_backends()
    True
    """
    names = []
    for name in AUTO_ORDER + ("cuda",):
        try:
            load(name)
        except BackendUnavailable:
            continue
        names.append(name)
    return names


def resolve(backend):
    """The backend module for a host (NumPy) call."""
    if backend is None:
        backend = os.environ.get("FASTLOSS_BACKEND") or None
    if backend is not None:
        return load(backend)
    for name in AUTO_ORDER:
        try:
            return load(name)
        except BackendUnavailable:
            continue
    raise BackendUnavailable("no backend can run")  # pragma: no cover - numpy always can
