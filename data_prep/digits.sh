#!/usr/bin/env bash
# The embedded demo dataset: scikit-learn's 1797 handwritten digits, pixel mode, 16x16, 1 channel.
# Usage: data_prep/digits.sh [OUT_DIR]   (default data/digits16)
set -euo pipefail
exec python -m dtr_scale.prep --source digits --vae none --out "${1:-data/digits16}" --shard-size 200
