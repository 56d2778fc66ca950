#!/usr/bin/env python3
"""Train RWKV with Lightning: `python lightning_trainer.py fit -c config.yaml` (also validate,
--print_config). All logic lives in rwkv/cli.py (RWKVCLI, a LightningCLI)."""

from rwkv.cli import main

if __name__ == "__main__":
    main()
