"""`python -m gradlab ...` is `gradlab ...`."""

import sys

from gradlab.cli import main

sys.exit(main())
