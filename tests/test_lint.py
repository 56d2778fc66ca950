"""The code base passes ruff with the repository's configuration (pyproject.toml)."""

import subprocess
import sys

from tests.conftest import ROOT


def test_ruff_clean():
    p = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "."], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-4000:]
