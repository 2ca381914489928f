"""Backend registry and selection: explicit, inspectable, lazily imported.

A backend is a module exposing ``NAME``, ``elementwise(...)`` and
``softmax_rows(...)`` with the kernel interface documented in
:mod:`fastloss.reference`.  Kernels trust their inputs: all validation happens
once, in :mod:`fastloss._api`.

Selection (``backend=None``):

1. ``FASTLOSS_BACKEND`` names the default; like an explicit ``backend=``, it
   raises :class:`BackendUnavailable` when that backend cannot run here.
2. Otherwise the first available of :func:`auto_order` for the op and
   compute dtype is used, quietly skipping those that cannot run.

``FASTLOSS_DISABLE=numba,c`` hides backends (as if not installed): CI uses it
to exercise the fallbacks.
"""
from __future__ import annotations

import importlib
import os
import threading

import numpy as np

#: every host backend, in the automatic preference order: C measured faster
#: than numba (or level on 2^10-element calls) for every op and dtype but the
#: two in :data:`ORDERS` -- 0.36-0.97x numba's time for the softmax ops (one
#: cell of 36 1.2x), 0.6-1.0x for float64 and for mse (2 threads,
#: float32/float64, 2^10-2^22 elements, one run alternating both; README)
AUTO_ORDER = ("c", "numba", "numpy")
#: (op, compute dtype) -> order, where it is not AUTO_ORDER: numba's float32
#: sigmoid kernels measured 0-20% faster than C's from 2^14 elements up
ORDERS = {(op, np.dtype(np.float32)): ("numba", "c", "numpy") for op in ("sigmoid_mse", "sigmoid_bce")}
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


# Every call reads FASTLOSS_BACKEND and FASTLOSS_DISABLE (they may change at
# runtime), and os.environ.get costs ~0.9 us (key encode, value decode).
# CPython's os.environ keeps its raw values in the dict _data, and every
# change through os.environ (setitem, delitem, update, monkeypatch) updates
# it, so a lookup there sees what os.environ.get would.  Raw values are
# cache keys, decoded (as os.environ does) only when they change.
_ENVIRON = os.environ
_ENV_DATA = getattr(_ENVIRON, "_data", None)
if isinstance(_ENV_DATA, dict) and hasattr(_ENVIRON, "encodekey") and hasattr(_ENVIRON, "decodevalue"):
    _RAW_KEYS = (_ENVIRON.encodekey("FASTLOSS_BACKEND"), _ENVIRON.encodekey("FASTLOSS_DISABLE"))
else:  # pragma: no cover - not CPython's os.environ
    _ENV_DATA = None


def _env_token():
    """(FASTLOSS_BACKEND, FASTLOSS_DISABLE) as raw values (None: unset)."""
    if _ENV_DATA is not None and os.environ is _ENVIRON:
        return _ENV_DATA.get(_RAW_KEYS[0]), _ENV_DATA.get(_RAW_KEYS[1])
    return os.environ.get("FASTLOSS_BACKEND"), os.environ.get("FASTLOSS_DISABLE")  # replaced os.environ


def _decode(raw):
    """The value os.environ.get returns for a raw value from :func:`_env_token`."""
    return raw if raw is None or isinstance(raw, str) else _ENVIRON.decodevalue(raw)


_disabled_cache = (None, frozenset())


def _disabled():
    global _disabled_cache
    raw = _env_token()[1]
    if raw != _disabled_cache[0]:  # parse once per distinct value: this is on every call's path
        text = _decode(raw) or ""
        _disabled_cache = (raw, frozenset(name.strip() for name in text.split(",") if name.strip()))
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


def auto_order(op, dtype):
    """The order ``backend=None`` tries the host backends in, for ``op`` on
    arrays computed in ``dtype`` (a call on float16 logits computes in
    float32).

    Examples
    --------
    >>> from fastloss._backends import auto_order
    >>> auto_order("softmax_cross_entropy", "float32")
    ('c', 'numba', 'numpy')
    >>> auto_order("sigmoid_bce", "float32")
    ('numba', 'c', 'numpy')
    """
    return _order(op, np.dtype(dtype))


def _order(op, cdt):
    """:func:`auto_order` for a compute dtype that is already a ``np.dtype``
    (calls pass theirs: converting again would cost ~0.25 us a call)."""
    return ORDERS.get((op, cdt), AUTO_ORDER)


def auto_backend(op, dtype="float32"):
    """Name of the backend ``backend=None`` uses here for NumPy inputs of ``op``.

    The first of :func:`auto_order` that can run (``FASTLOSS_BACKEND``, when
    set, wins, as in a call).

    Parameters
    ----------
    op : str
        A loss name, e.g. ``"softmax_cross_entropy"``.
    dtype : dtype-like
        The logits' dtype (float16 computes in float32; other non-float
        dtypes raise ``TypeError``, as in a call).

    Examples
    --------
    >>> import fastloss
    >>> fastloss.auto_backend("mse", "float64") in fastloss.available_backends()
    True
    """
    from ._validate import compute_dtype
    from .registry import LOSSES

    if op not in LOSSES:
        raise ValueError(f"op must be one of {', '.join(map(repr, LOSSES))}; got {op!r}")
    return resolve(None, op, compute_dtype(np.dtype(dtype))[0]).NAME


#: order -> ((raw FASTLOSS_BACKEND, raw FASTLOSS_DISABLE), module) of the last
#: successful backend=None resolution with that order.  Loads are sticky (a
#: backend that loaded or failed once stays so), so only these two values
#: can change it.
_auto_cache: dict = {}


def resolve(backend, op=None, cdt=None):
    """The backend module for a host (NumPy) call: ``backend``, or the first
    that can run of the automatic order for ``op`` computed in ``cdt`` (a
    ``np.dtype``; :data:`AUTO_ORDER` when either is None)."""
    if backend is not None:
        return load(backend)
    order = _order(op, cdt)
    key = _env_token()
    hit = _auto_cache.get(order)
    if hit is not None and hit[0] == key:
        return hit[1]
    mod = _resolve_default(_decode(key[0]) or None, order)
    if _env_token() == key:  # not changed meanwhile (load() reads FASTLOSS_DISABLE itself)
        _auto_cache[order] = (key, mod)
    return mod


def _resolve_default(backend, order):
    if backend is not None:
        return load(backend)
    for name in order:
        try:
            return load(name)
        except BackendUnavailable:
            continue
    raise BackendUnavailable("no backend can run")  # pragma: no cover - numpy always can
