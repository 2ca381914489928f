"""Building without a C compiler: install goes on, the C backend reports why it is missing."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


@pytest.fixture
def tree(tmp_path):
    """A copy of the package sources without any built extension."""
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy(os.path.join(ROOT, name), tmp_path)
    shutil.copytree(os.path.join(ROOT, "csrc"), tmp_path / "csrc")
    shutil.copytree(os.path.join(ROOT, "fastloss"), tmp_path / "fastloss",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "_fastloss_c*"))
    return tmp_path


def _build(tree, **env):
    full = dict(os.environ, **env)
    return subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree, env=full,
                          capture_output=True, text=True, timeout=120)


def _c_status(tree):
    # an editable install (pip install -e, as CI does) puts a finder on
    # sys.meta_path that maps 'fastloss' to the checkout, ahead of PYTHONPATH:
    # drop it so the copy in `tree` is the one imported (asserted below)
    code = ("import sys\n"
            "sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in getattr(f, '__module__', '')]\n"
            "import fastloss, fastloss._backends as b\n"
            f"assert fastloss.__file__.startswith({str(tree)!r}), fastloss.__file__\n"
            "print('c' in fastloss.available_backends())\n"
            "try:\n    b.load('c')\nexcept b.BackendUnavailable as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(tree)))
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.skipif(sys.platform == "win32", reason="CC override is a Unix compiler convention")
def test_failed_compile_is_skipped_with_a_message(tree):
    r = _build(tree, CC="/bin/false")
    assert r.returncode == 0, r.stderr
    assert "C extension fastloss._fastloss_c was NOT built" in r.stderr
    assert not list((tree / "fastloss").glob("_fastloss_c*.so"))
    out = _c_status(tree)
    assert out.startswith("False")
    assert "not built" in out  # the reason reaches the user


def test_no_c_switch_skips_the_extension(tree):
    r = _build(tree, FASTLOSS_NO_C="1")
    assert r.returncode == 0, r.stderr
    assert "FASTLOSS_NO_C is set" in r.stderr
    assert not list((tree / "fastloss").glob("_fastloss_c*"))
