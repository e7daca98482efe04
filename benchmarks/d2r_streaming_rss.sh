#!/bin/bash
# Peak RSS of `glocal train d2r` (2 steps, batch 2, 20 held-out images evaluated twice) on N generated
# 640 x 480 box images, with the glocal code under CODE_ROOT (e.g. a checkout of main, or this worktree).
# usage: benchmarks/d2r_streaming_rss.sh CODE_ROOT N TAG [extra glocal train options]
# prints the load average before and after, the log, peak RSS, user / system / wall time, and the weights' hash
# (benchmarks/d2r_streaming.py hash). PYTHON defaults to /work/main/.venv/bin/python; its glocal entry point is used.
set -e
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-/work/main/.venv/bin/python}
code=$1; n=$2; tag=$3; shift 3
data=/tmp/d2r-bench-$n; out=/tmp/d2r-rss; mkdir -p $out
[ -f $data/boxes.csv ] || $py "$here/d2r_streaming.py" make $data --n $n --side 640
rm -rf $out/run-$tag
echo "== $tag ($code, n=$n) $* :: $(uptime)"
PYTHONPATH=$code /usr/bin/time -v "$(dirname $py)/glocal" train d2r --data $data/boxes.csv --out $out/run-$tag \
    --steps 2 --batch 2 --eval-fraction "$($py -c "print(20 / $n)")" --eval-every 2 "$@" > $out/$tag.log 2>&1
grep -E "Maximum resident|Elapsed|User time|System time|^step" $out/$tag.log
echo "after: $(uptime)"
echo "hash $($py "$here/d2r_streaming.py" hash $out/run-$tag/model.pt)"
