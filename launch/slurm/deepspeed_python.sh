#!/usr/bin/env bash
# The `python` the deepspeed runner starts its per-node launcher with (launch/slurm/deepspeed_launcher.py
# sets it as sys.executable): the same interpreter, through deepspeed_launcher.py, so that it too
# exits without the interpreter's teardown.
exec "${DTR_REAL_PYTHON:?set by launch/slurm/deepspeed_launcher.py}" "$(dirname "${BASH_SOURCE[0]}")/deepspeed_launcher.py" --as-python "$@"
