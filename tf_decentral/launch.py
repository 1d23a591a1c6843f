"""Runs a local cluster: `python -m tf_decentral.launch --workers N -- CMD`.

Starts N workers (plus `--ps K` parameter servers and a `--chief`) on this
machine, each running CMD with its own `TF_CONFIG` on a free loopback port,
and prefixes every output line with its task, e.g. `[worker:1] `. Run
`python -m tf_decentral.launch --help` for the options, and see
`tf_decentral.cluster.local_launcher` for how tasks are started and stopped.

Examples::

    python -m tf_decentral.launch --workers 4 -- python examples/train.py
    python -m tf_decentral.launch --workers 2 --ps 2 --chief -- python t.py
    python -m tf_decentral.launch --workers 2 --dry-run
"""

import sys

from tf_decentral.cluster.local_launcher import main

if __name__ == "__main__":
    sys.exit(main())
