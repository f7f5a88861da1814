"""``python -m pipelines.cli``: the ``concept-erase`` command."""

import sys

from pipelines.cli import main

sys.exit(main())
