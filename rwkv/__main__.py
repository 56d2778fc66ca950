"""One command line for the whole trainer:

    python -m rwkv fit -c config.yaml          train (also: validate; LightningCLI, rwkv/cli.py)
    python -m rwkv preload config.yaml         tokenize the config's data: section to disk
    python -m rwkv init --n_layer 12 ... OUT   a fresh model with the official init
    python -m rwkv export CKPT OUT             official .pth / safetensors / Hugging Face
    python -m rwkv sample MODEL --prompt ...   generate text with the recurrent state

The top-level scripts (lightning_trainer.py, preload_datapath.py, init_model.py, export_checkpoint.py,
dragon_test.py) are thin wrappers over the same functions; both spellings take the same arguments.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module with main(argv), whether the command word is passed on: LightningCLI needs it)
COMMANDS = {
    "fit": ("rwkv.cli", True),
    "validate": ("rwkv.cli", True),
    "preload": ("rwkv.data.preload_cli", False),
    "init": ("rwkv.tools.init_model", False),
    "export": ("rwkv.tools.export_checkpoint", False),
    "sample": ("rwkv.tools.sample", False),
}


def usage() -> str:
    return __doc__.strip() + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"python -m rwkv: unknown command {command!r}; choose one of {', '.join(COMMANDS)}\n\n{usage()}",
              file=sys.stderr)
        return 2
    module, keep_word = COMMANDS[command]
    sys.argv = [f"python -m rwkv {command}", *rest]  # programs that read sys.argv see their own arguments
    rc = importlib.import_module(module).main([command, *rest] if keep_word else rest)
    if command == "preload":
        import gc

        gc.freeze()  # as preload_datapath.py: skip teardown collections over what `datasets` imported
    return int(rc or 0)


if __name__ == "__main__":  # the guard matters: `datasets` spawn pools re-import the main module
    sys.exit(main())
