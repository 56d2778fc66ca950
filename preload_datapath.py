"""Tokenize the `data:` section of a fit config into `data.data_path` (docs/data.md).

    python preload_datapath.py configs/your.yaml [--force]

The guard matters: `datasets` may start spawn pools that re-import this script
(the spawn start method imports __main__).
"""

import gc
import sys

if __name__ == "__main__":
    from rwkv.data.preload_cli import main

    rc = main()
    # Interpreter teardown runs full garbage collections over everything `datasets` and pandas
    # imported: ~0.3 s of a 3 s preload, for memory the OS frees anyway. Frozen objects are skipped.
    gc.freeze()
    sys.exit(rc)
