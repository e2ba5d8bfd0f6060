"""``python -m plait.proxy --config bootstrap.yaml``."""

import sys

from plait.proxy.main import main

sys.exit(main())
