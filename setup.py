"""Build hook: the optional C backend (cffi API mode) -- metadata is in pyproject.toml.

``FASTLOSS_NO_C=1`` skips the extension.  A failed compile (no compiler,
unsupported platform) is reported and skipped: fastloss still installs and
runs on its NumPy and Numba backends.
"""
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext whose extensions are optional: a failure warns, never aborts."""

    def run(self):
        self._failed = set()
        try:
            super().run()
        except Exception as exc:  # DistutilsPlatformError: no compiler at all
            self._skip(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # CompileError, LinkError, DistutilsError
            self._failed.add(ext.name)
            self._skip(exc, ext.name)

    def copy_extensions_to_source(self):
        # --inplace / editable installs: copy only what was built
        built = [e for e in self.extensions if e.name not in self._failed]
        self.extensions, everything = built, self.extensions
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = everything

    @staticmethod
    def _skip(exc, name="fastloss._fastloss_c"):
        sys.stderr.write(
            f"\n*** fastloss: the optional C extension {name} was NOT built "
            f"({type(exc).__name__}: {exc}).\n"
            "*** fastloss works without it (NumPy/Numba backends); install a C "
            "compiler and reinstall to get backend='c'.\n\n")


def _cffi_modules():
    if os.environ.get("FASTLOSS_NO_C", "") not in ("", "0"):
        sys.stderr.write("fastloss: FASTLOSS_NO_C is set; skipping the C extension\n")
        return []
    return ["csrc/build_ffi.py:ffibuilder"]


setup(cffi_modules=_cffi_modules(), cmdclass={"build_ext": OptionalBuildExt})
