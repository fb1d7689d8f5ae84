"""``python -m unmask`` (and ``torchrun -m unmask``) run the command line."""

import sys

from unmask.cli import main

sys.exit(main())
