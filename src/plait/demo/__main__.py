"""``python -m plait.demo``: run the demo HTTP service (see :mod:`plait.demo.app`)."""

from plait.demo.app import main

raise SystemExit(main())
