"""The deepspeed launcher, ending without the interpreter's teardown.

    python launch/slurm/deepspeed_launcher.py RUNNER_ARGS...      (= python -m deepspeed.launcher.runner)

The launcher is two processes per node: the runner, and the `deepspeed.launcher.launch` it starts,
which starts the workers. Each has torch and deepspeed imported, and a Python interpreter that
exits normally frees every module first: measured 4-5 s per process here, so 10 s between the
workers' exit and the runner's on a 2-core node. This runs each of the two with deepspeed's own
code (runpy, unchanged), then ends it with `os._exit` and the exit code deepspeed chose. The runner
starts its child as `sys.executable -u -m deepspeed.launcher.launch ...`; `sys.executable` is
pointed at deepspeed_python.sh beside this file, which runs that child through this file again.
The workers are started with the real interpreter.
"""
from __future__ import annotations

import os
import runpy
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run_module(module: str, argv: list[str]) -> int:
    sys.argv = [module, *argv]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--as-python"]:  # deepspeed_python.sh: `python [-u] -m MODULE ARGS`
        argv = argv[1:]
        if argv[:1] == ["-u"]:
            sys.stdout.reconfigure(write_through=True)
            sys.stderr.reconfigure(write_through=True)
            argv = argv[1:]
        if argv[:1] != ["-m"] or len(argv) < 2:
            print(f"deepspeed_launcher.py --as-python: expected [-u] -m MODULE ..., got {argv[:3]}", file=sys.stderr)
            return 2
        return run_module(argv[1], argv[2:])
    os.environ["DTR_REAL_PYTHON"] = sys.executable  # for deepspeed_python.sh, and the workers
    sys.executable = os.path.join(HERE, "deepspeed_python.sh")
    return run_module("deepspeed.launcher.runner", argv)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
