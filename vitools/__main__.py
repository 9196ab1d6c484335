"""``python -m vitools``: the same command line as the ``vitools`` script (:func:`vitools.cli.main`)."""

import sys

from vitools.cli import main

sys.exit(main())
