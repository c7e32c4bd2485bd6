"""Reading checkpoint files without running code from them.

Checkpoints travel between clusters and people, so a checkpoint folder is untrusted input. Three
kinds of file in it are pickles, and a plain `pickle.load` of any of them runs whatever callable
the file names:

- `state/.metadata`, DCP's index (`FileSystemReader.read_metadata` is a plain `pickle.load`): read
  here by an unpickler that resolves only DCP's own metadata classes and the few torch types they
  hold (`METADATA_GLOBALS`, taken from the metadata files every engine writes);
- the non-tensor entries of the DCP state, which DCP's default planner loads with
  `torch.load(weights_only=False)`: loaded here with `weights_only=True`. This version writes
  none (the optimizer's hyper-parameters are saved as tensors, see parallel/training_state.py);
  checkpoints of earlier versions hold plain floats and strings there, which load the same way;
- `trainer_rank*.pt` (step, RNG states, data position): `torch.load(weights_only=True)`. Earlier
  versions stored numpy's RNG state as an ndarray; the three numpy names needed to rebuild an
  array (and nothing else) are allowed for those files.

`dcp_load` is `dcp.load` with both guards in place; every reader of a checkpoint (resume, export,
`sample --weights DIR`, the start-up checks) goes through this module. A file that fails a check
is refused with one line, "not a dtr-scale checkpoint file: unexpected object M.N in FILE", before
the object is built.
"""
from __future__ import annotations

import io
import os
import pickle
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from .checkpoint_errors import CheckpointRefused

_DCP_METADATA = "torch.distributed.checkpoint.metadata"
# Everything a DCP index of ours refers to by name (inspected in the .metadata files that the single,
# DDP, FSDP2 and DeepSpeed engines write); torch dtypes are added below.
METADATA_GLOBALS = frozenset({
    (_DCP_METADATA, "Metadata"), (_DCP_METADATA, "MetadataIndex"), (_DCP_METADATA, "StorageMeta"),
    (_DCP_METADATA, "TensorStorageMetadata"), (_DCP_METADATA, "BytesStorageMetadata"),
    (_DCP_METADATA, "ChunkStorageMetadata"), (_DCP_METADATA, "TensorProperties"),
    (_DCP_METADATA, "_MEM_FORMAT_ENCODING"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"), ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
})
# numpy's RNG state in trainer files of earlier versions: an ndarray and its dtype, nothing more.
_NUMPY_ARRAY_GLOBALS = [np.ndarray, np.dtype, type(np.dtype(np.uint32))]
try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct
_NUMPY_ARRAY_GLOBALS.append(_reconstruct)


def refused(path: str | os.PathLike, what: str) -> CheckpointRefused:
    return CheckpointRefused(f"not a dtr-scale checkpoint file: {what} in {os.fspath(path)}; "
                             "nothing in it was run. Use checkpoints from sources you trust, "
                             "written by dtr-scale")


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        allowed = (module, name) in METADATA_GLOBALS or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype))
        if not allowed:
            raise refused(self.path, f"unexpected object {module}.{name}")
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise refused(self.path, "unexpected persistent reference")


def load_metadata_file(path: str | os.PathLike) -> Metadata:
    """A DCP `.metadata` file through the allow-list; refuses anything else with one line."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            meta = _MetadataUnpickler(f, path).load()
    except CheckpointRefused:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError, IndexError) as exc:
        raise refused(path, f"unreadable DCP index ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, Metadata):
        raise refused(path, f"unexpected object of type {type(meta).__name__} (not a DCP index)")
    return meta


def read_dcp_metadata(state_dir: str | os.PathLike) -> Metadata:
    """The index of the DCP state in `state_dir` (FileNotFoundError if there is none)."""
    index = os.path.join(os.fspath(state_dir), ".metadata")
    if not os.path.isfile(index):
        raise FileNotFoundError(f"checkpoint shard index missing: {index}")
    return load_metadata_file(index)


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader with the index read through the allow-list (dcp.load reads the index
    itself, so the guard has to sit in the reader it is given)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        name = ".metadata" if rank is None else f"__{rank}.metadata"
        meta = load_metadata_file(os.path.join(os.fspath(self.path), name))
        if getattr(meta, "storage_meta", None) is None:
            meta.storage_meta = StorageMeta()
        meta.storage_meta.load_id = self.load_id
        return meta


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, with non-tensor entries loaded as `weights_only=True`."""

    def set_up_planner(self, state_dict, metadata: Metadata | None = None, is_coordinator: bool = False) -> None:
        super().set_up_planner(state_dict, metadata, is_coordinator)
        self._files = {index.fqn: info.relative_path for index, info in (metadata.storage_data or {}).items()}

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        fqn = read_item.storage_index.fqn
        try:
            obj = torch.load(value, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            shard = os.path.join(os.fspath(self._state_dir), self._files.get(fqn, "?"))
            raise refused(shard, f"{_describe_weights_only_error(exc)} in entry {fqn!r}") from None
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def check_byte_entries(state_dir: str | os.PathLike, index: Metadata) -> None:
    """Load every non-tensor entry of a DCP state weights-only (this version writes none;
    earlier ones wrote the optimizer's hyper-parameters, a few bytes each), refusing the first
    that holds anything else: readers that skip those entries still refuse a tampered state."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

    state_dir = os.fspath(state_dir)
    for fqn, md in index.state_dict_metadata.items():
        if not isinstance(md, BytesStorageMetadata):
            continue
        info = index.storage_data.get(MetadataIndex(fqn))
        if info is None:
            raise refused(os.path.join(state_dir, ".metadata"), f"entry {fqn!r} without storage")
        shard = os.path.join(state_dir, info.relative_path)
        if getattr(info, "transform_descriptors", None):  # never written by dtr-scale
            raise refused(shard, f"unexpected encoding {info.transform_descriptors} of entry {fqn!r}")
        with open(shard, "rb") as f:
            f.seek(info.offset)
            data = io.BytesIO(f.read(info.length))
        try:
            torch.load(data, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise refused(shard, f"{_describe_weights_only_error(exc)} in entry {fqn!r}") from None
        except (RuntimeError, EOFError) as exc:
            raise refused(shard, f"unreadable entry {fqn!r} ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def dcp_load(state: dict, state_dir: str | os.PathLike, *, no_dist: bool = False) -> None:
    """`dcp.load(state, checkpoint_id=state_dir)` (collective unless `no_dist`) with the index
    and every non-tensor entry read safely. A refusal on any rank surfaces as CheckpointRefused."""
    reader = SafeFileSystemReader(state_dir)
    planner = SafeLoadPlanner()
    planner._state_dir = os.fspath(state_dir)
    try:
        dcp.load(state, storage_reader=reader, planner=planner, no_dist=no_dist)
    except CheckpointRefused:
        raise
    except (CheckpointException, Exception) as exc:  # DCP wraps each rank's error (a BaseException)
        refusal = _find_refusal(exc)
        if refusal is not None:
            raise refusal from None
        raise


def _find_refusal(exc: BaseException) -> CheckpointRefused | None:
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen or e is None:
            continue
        seen.add(id(e))
        if isinstance(e, CheckpointRefused):
            return e
        if isinstance(e, CheckpointException):  # {rank: (exception, traceback)}
            stack += [wrapped[0] for wrapped in e.failures.values()]
        stack += [e.__cause__, e.__context__]
    text = str(exc)
    if "not a dtr-scale checkpoint file:" in text:  # a peer's refusal, known only by its message
        line = text[text.index("not a dtr-scale checkpoint file:"):].splitlines()[0]
        return CheckpointRefused(line)
    return None


def load_trainer_file(path: str | os.PathLike) -> dict:
    """A `trainer_rank*.pt`: tensors and plain types only (numpy arrays in files of earlier
    versions); anything else is refused naming the file."""
    path = os.fspath(path)
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise refused(path, _describe_weights_only_error(exc)) from None
    except (RuntimeError, EOFError) as exc:  # not a torch zip file, truncated, ...
        raise refused(path, f"unreadable trainer state ({_first_line(exc)})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise refused(path, "unexpected content (no trainer state dict with a step)")
    return state


def _describe_weights_only_error(exc: BaseException) -> str:
    """torch's weights-only message, reduced to the global it refused."""
    import re

    text = str(exc)
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text) or re.search(r"GLOBAL ([\w.]+)", text)
    if m:
        return f"unexpected object {m.group(1)}"
    return f"unexpected object ({_first_line(exc)})"
