"""DeepSpeed's one-time C++ build on the CPU, announced before it starts.

Every DeepSpeed process group on the CPU loads `deepspeed_shm_comm`, a shared-memory collective
op that DeepSpeed JIT-compiles with torch's extension loader the first time (a minute or two,
longer on a busy machine) and then reuses from torch's extension cache. DeepSpeed prints nothing
until the build is done, so a first run looks hung; it has no run-time switch to skip the op
(only `DS_BUILD_SHM_COMM=1` at install time, which pre-builds it), so we say what is happening.
"""
from __future__ import annotations

import os
import sys

import torch

SHM_OP = "deepspeed_shm_comm"


def extensions_root() -> str:
    """Where torch's JIT extension loader builds: $TORCH_EXTENSIONS_DIR, else its default root
    plus a python/accelerator folder (e.g. ~/.cache/torch_extensions/py311_cpu)."""
    explicit = os.environ.get("TORCH_EXTENSIONS_DIR")
    if explicit:
        return explicit
    from torch.utils.cpp_extension import get_default_build_root

    if torch.version.hip is not None:
        accel = "rocm" + torch.version.hip.replace(".", "")
    elif torch.version.cuda is not None:
        accel = "cu" + torch.version.cuda.replace(".", "")
    else:
        accel = "cpu"
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return os.path.join(get_default_build_root(), f"{python}_{accel}")


def shm_op_ready() -> bool:
    """True when DeepSpeed will load the op without compiling: installed pre-built, or already in
    torch's extension cache."""
    from deepspeed.git_version_info import installed_ops

    if installed_ops.get(SHM_OP, False):
        return True
    return os.path.isfile(os.path.join(extensions_root(), SHM_OP, SHM_OP + ".so"))


def announce_cpu_op_build(device: torch.device, rank: int) -> bool:
    """Print one line before `deepspeed.initialize` if it is about to compile the op (CPU, rank 0,
    Linux, not built yet). Returns whether it printed."""
    if device.type != "cpu" or rank != 0 or not sys.platform.startswith("linux") or shm_op_ready():
        return False
    print(f"DeepSpeed on CPU: compiling its shared-memory communication op ({SHM_OP}) once, into "
          f"{os.path.join(extensions_root(), SHM_OP)}; this takes a minute or two (longer on a busy "
          "machine) and later runs reuse it", flush=True)
    return True
