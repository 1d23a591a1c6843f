"""`python -m bench.netsim` (from the repo root) or `python bench/netsim`."""

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(
        0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    )
    from netsim.cli import main
else:
    from .cli import main

sys.exit(main())
