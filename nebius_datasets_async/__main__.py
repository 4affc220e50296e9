"""``python -m nebius_datasets_async``: the ``nebius-datasets`` command line."""

import sys

from ._cli import main

sys.exit(main())
