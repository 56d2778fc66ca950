"""Tokenize the `data:` section of a fit config into `data.data_path` (docs/data.md).

    python preload_datapath.py configs/your.yaml [--force]

The guard matters: `datasets` may start spawn pools that re-import this script (platform notes).
"""

import sys

if __name__ == "__main__":
    from rwkv.data.cli import main

    sys.exit(main())
