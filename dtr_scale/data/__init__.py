"""Latent data: the shard format, the prep (encode) job and the streaming loader.

Public API:
    read_manifest(path) -> Manifest        dataset.json beside the shards
    check_data_path(path) -> Manifest      clear errors for a bad data path; call before any
                                           process group starts
    verify_shards(manifest, on_error, verify_sha256) -> (good shards, [(file, reason)])
                                           every shard against dataset.json, once, at start
    LatentLoader(path, batch_size, ...)    iterable of (x, y) with state_dict()/load_state_dict()
    GlobalLoader(path, global_batch, ...)  data.mode=global: GlobalBatch(x, y, positions[, images]) in a
                                           world-size-invariant order, read by random access
                                           through the sample index (sample_index, index_cache)
    DataError                              raised for bad shards/samples with on_error="raise"
The sample layout is documented in `dtr_scale.data.shard_format`.
"""
from .global_loader import GlobalBatch, GlobalLoader
from .loader import LatentLoader
from .manifest import Manifest, ShardInfo, check_data_path, read_manifest, verify_shards
from .shard_format import DataError

__all__ = ["GlobalBatch", "GlobalLoader", "LatentLoader", "Manifest", "ShardInfo", "check_data_path",
           "read_manifest", "verify_shards", "DataError"]
