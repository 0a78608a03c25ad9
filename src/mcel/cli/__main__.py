"""``python -m mcel.cli`` (and ``torchrun -m mcel.cli``) run the ``mcel`` command."""

import sys

from mcel.cli.app import main

sys.exit(main())
