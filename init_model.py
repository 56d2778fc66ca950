#!/usr/bin/env python3
"""Create a freshly initialised RWKV model .pth. Usage: python init_model.py --n_layer 12 --n_embd 768
--vocab_size world OUT.pth   (see --help). Logic lives in rwkv/tools/init_model.py."""

import sys

from rwkv.tools.init_model import main

if __name__ == "__main__":
    sys.exit(main())
