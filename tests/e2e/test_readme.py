"""The README's workflow block runs as written, with fewer training steps and the paths
moved into a temporary directory."""

import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.support.runs import env

pytestmark = pytest.mark.slow


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\nsource \.venv/bin/activate.*?\n(.*?)```", text, re.S).group(1)
    joined = block.replace("\\\n", " ")
    return [line.split("#")[0].strip() if not line.strip().startswith("python dragon") else line.strip()
            for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_readme_workflow(tmp_path):
    commands = readme_commands()
    assert [c.split()[1] for c in commands] == ["-m", "init_model.py", "preload_datapath.py",
                                                 "lightning_trainer.py", "export_checkpoint.py", "dragon_test.py"]
    for cmd in commands:
        cmd = cmd.replace("data/demo", str(tmp_path / "data")).replace("out/demo", str(tmp_path / "out"))
        cmd = cmd.replace("--trainer.max_steps 300", "--trainer.max_steps 3")
        # bash's $'…' (ANSI-C quoting, used for the prompt's newlines) -> the string it stands for
        cmd = re.sub(r"\$'([^']*)'", lambda m: shlex.quote(m[1].encode().decode("unicode_escape")), cmd)
        args = shlex.split(cmd)
        assert args[0] == "python"
        p = subprocess.run([sys.executable, *args[1:]], cwd=ROOT, env=env(), capture_output=True, text=True,
                           timeout=600)
        assert p.returncode == 0, f"{cmd}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    assert (tmp_path / "out" / "model.pth").is_file()
