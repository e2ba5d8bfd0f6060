"""The harness modules are flat files in benchmarks/; make them importable."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
