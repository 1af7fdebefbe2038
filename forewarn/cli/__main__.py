"""``python -m forewarn.cli``: the ``forewarn`` command."""

import sys

from forewarn.cli.main import main

sys.exit(main())
