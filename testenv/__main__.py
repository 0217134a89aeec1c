"""`python -m testenv dev`: the local cluster of `make dev`, which now lives in devcluster/.

Kept so the old command still works; see docs/dev-cluster.md and `python -m devcluster --help`.
"""

from __future__ import annotations

import sys

from devcluster.__main__ import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
