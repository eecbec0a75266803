"""``python -m dl_driver`` runs the ``dl-driver`` command."""

import sys

from dl_driver.cli import main

sys.exit(main())
