"""``python -m plait.control``: run the control plane (see :mod:`plait.control.server`)."""

import sys

from plait.control.server import main

sys.exit(main())
