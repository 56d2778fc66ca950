"""`import rwkv` is this package, from the repo root or anywhere else, never PyPI's inference engine, which
is installed apart (docs/design.md §6)."""

import subprocess
import sys

from tests.conftest import ROOT
from tests.support.pip_rwkv import ORACLE


def test_import_rwkv_resolves_to_repo_package():
    code = "import rwkv, rwkv.model, rwkv.ops; print(rwkv.__file__); print(rwkv.model.build_model.__module__)"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    path, module = p.stdout.split()
    assert path == str(ROOT / "rwkv" / "__init__.py") and module == "rwkv.model.registry"


def test_import_rwkv_from_anywhere_is_this_package():
    """`make setup` installs the repo editable: no script needs to put the repo on sys.path."""
    p = subprocess.run([sys.executable, "-I", "-c", "import rwkv.model, rwkv; print(rwkv.__file__)"],
                       cwd="/", capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(ROOT / "rwkv" / "__init__.py")


def test_pip_rwkv_is_installed_apart():
    """The interop tests need PyPI's package: it exists in the environment, in its own folder (ORACLE) that
    only the processes that ask for it have on their path, outside the repo."""
    p = subprocess.run([sys.executable, "-c", "import rwkv.model, rwkv; print(rwkv.__file__)"], cwd="/",
                       capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin",
                                                                         "PYTHONPATH": str(ORACLE)})
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(str(ORACLE)) and str(ROOT / "rwkv") not in p.stdout


def test_importing_the_package_has_no_side_effects():
    # third-party libraries first: Lightning itself sets a few environment variables when imported
    code = ("import os, torch, lightning.pytorch.cli, datasets, jsonargparse\n"
            "before = (dict(os.environ), torch.backends.cuda.matmul.allow_tf32, torch.get_num_threads())\n"
            "import rwkv, rwkv.model, rwkv.ops, rwkv.training, rwkv.data, rwkv.checkpoint, rwkv.cli\n"
            "after = (dict(os.environ), torch.backends.cuda.matmul.allow_tf32, torch.get_num_threads())\n"
            "import sys; assert before == after, 'import changed global state'\n"
            "assert 'rwkv.ops.v7.cuda' not in sys.modules and 'rwkv.ops.v6.cuda' not in sys.modules\n"
            "assert 'deepspeed' not in sys.modules")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
