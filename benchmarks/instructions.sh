#!/bin/bash
# User-space instructions per request of the proxy's request path: benchmarks/hotpath.py
# under valgrind --tool=callgrind, run for 1,000 and 6,000 requests so that start-up and
# warm-up cancel out. Deterministic, unlike times on a shared machine: the A/B for a change.
#
#   benchmarks/instructions.sh [TREE]    # TREE: a checkout (default: this one), run
#                                        # through PYTHONPATH=TREE/src
set -euo pipefail
tree=$(cd "${1:-$(dirname "$0")/..}" && pwd)
python=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python
count() {
    PYTHONPATH="$tree/src" valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        "$python" "$tree/benchmarks/hotpath.py" --requests "$1" --repeat 1 2>&1 >/dev/null |
        grep -o "Collected : [0-9]*" | grep -o "[0-9]*"
}
a=$(count 1000)
b=$(count 6000)
echo "$tree: $(((b - a) / 5000)) instructions per request"
