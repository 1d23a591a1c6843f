"""`python -m tf_decentral.cluster` is `python -m tf_decentral.launch`."""

import sys

from tf_decentral.cluster.local_launcher import main

if __name__ == "__main__":
    sys.exit(main())
