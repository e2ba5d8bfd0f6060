#!/bin/bash
# User-space instructions per request of the proxy's request path: benchmarks/hotpath.py
# under valgrind --tool=callgrind, run for 1,000 and 6,000 requests so that start-up and
# warm-up cancel out. Deterministic, unlike times on a shared machine: the A/B for a change.
#
#   benchmarks/instructions.sh [TREE] [HOTPATH ARGS...]
#       TREE: a checkout (default: this one), run through PYTHONPATH=TREE/src with
#       TREE/benchmarks/hotpath.py; HOTPATH ARGS (starting with "-") go to hotpath.py,
#       e.g. `benchmarks/instructions.sh --hop inbound` (the 2-hop case's second proxy)
set -euo pipefail
tree_arg=""
if [[ $# -gt 0 && $1 != -* ]]; then
    tree_arg=$1
    shift
fi
tree=$(cd "${tree_arg:-$(dirname "$0")/..}" && pwd)
python=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python
count() {
    PYTHONPATH="$tree/src" valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        "$python" "$tree/benchmarks/hotpath.py" "${@:2}" --requests "$1" --repeat 1 2>&1 >/dev/null |
        grep -o "Collected : [0-9]*" | grep -o "[0-9]*"
}
a=$(count 1000 "$@")
b=$(count 6000 "$@")
echo "$tree${*:+ ($*)}: $(((b - a) / 5000)) instructions per request"
