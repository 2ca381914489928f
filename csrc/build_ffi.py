"""cffi out-of-line API-mode build of ``fastloss._fastloss_c``.

Only builds the ``ffibuilder`` object (setup.py compiles it through
``cffi_modules``).  The cdef is the FL_CDEF block of ``fastloss.h``: the
header is the single source of the C interface.

Build switches (environment):
``FASTLOSS_C_NATIVE=1``  compile for this CPU (``-march=native``), no clones.
``FASTLOSS_C_CFLAGS``     extra compiler flags, appended.
"""
import os
import re
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = ["fl_elementwise.c", "fl_softmax.c", "fl_parallel.c"]


def read_cdef(path=os.path.join(HERE, "fastloss.h")):
    """The declarations between the FL_CDEF markers of the header."""
    with open(path) as f:
        text = f.read()
    match = re.search(r"/\* FL_CDEF_BEGIN \*/(.*)/\* FL_CDEF_END \*/", text, re.S)
    if match is None:
        raise RuntimeError(f"{path}: FL_CDEF_BEGIN/END markers not found")
    return match.group(1)


def compile_args():
    """Flags: IEEE-exact (no -ffast-math); -fno-trapping-math lets gcc
    if-convert the NaN-aware selects so the loops vectorise."""
    if sys.platform == "win32":  # MSVC: plain optimisation, no clones
        return ["/O2"], []
    args = ["-O3", "-std=c99", "-fno-trapping-math", "-ffp-contract=fast", "-pthread",
            "-fvisibility=hidden"]
    if os.environ.get("FASTLOSS_C_NATIVE", "") not in ("", "0"):
        args += ["-march=native", "-DFL_NO_CLONES"]
    args += os.environ.get("FASTLOSS_C_CFLAGS", "").split()
    return args, ["-pthread"]


ffibuilder = FFI()
ffibuilder.cdef(read_cdef())
_cargs, _largs = compile_args()
ffibuilder.set_source(
    "fastloss._fastloss_c",
    '#include "fastloss.h"',
    sources=[os.path.relpath(os.path.join(HERE, s)) for s in SOURCES],
    include_dirs=[os.path.relpath(HERE)],
    depends=[os.path.relpath(os.path.join(HERE, h)) for h in
             ("fastloss.h", "fl_math.h", "fl_parallel.h", "fl_elementwise_impl.h", "fl_elementwise_kern.h",
              "fl_softmax_impl.h", "fl_softmax_kern.h", "fl_variants.h", "fl_stream.h")],
    extra_compile_args=_cargs,
    extra_link_args=_largs,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
