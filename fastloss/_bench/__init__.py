"""Benchmark, stability and experiment machinery behind ``fastloss bench``.

Modules: :mod:`.timing` (timers, STREAM-like bandwidth), :mod:`.peers`
(textbook NumPy, PyTorch, JAX, torch.compile implementations of every loss),
:mod:`.throughput`, :mod:`.stability`, :mod:`.experiments` and
:mod:`.report` (Markdown + JSON).  Everything iterates over
:data:`fastloss.registry.LOSSES` and :func:`fastloss.available_backends`.
"""
