#!/usr/bin/env python3
"""Sample text from an RWKV .pth with the recurrent state (sanity check after training).

    python dragon_test.py MODEL.pth [--device cpu|cuda] [--tokens N] [--prompt TEXT] [--temperature T] [--top_p P]
                                 [--state STATE_FILE]
"""

import sys

from rwkv.tools.sample import main

if __name__ == "__main__":
    sys.exit(main())
