"""Sampling images: guidance, decoding, shard files and their assembly (per-sample noise comes
from dtr_scale.randomness and is re-exported here).

`generate` is the entry point for library code (the training loop's sample grids and in-loop
evaluation); `run_sampling` is the distributed job behind `python -m dtr_scale.sample`.
"""
from ..randomness import PerSampleNoise, draw_labels, sample_generators, sample_seed
from .assemble import assemble_samples
from .decode import PixelDecoder, VaeDecoder, make_decoder, to_uint8
from .generate import SAMPLERS, generate, sample_latents
from .grid import grid_array, save_grid, save_pngs
from .guidance import GuidedDenoiser
from .options import SampleOptions, options_help, parse_options
from .run import run_sampling
from .shards import ShardPlan
from .weights import load_sampling_model

__all__ = [
    "GuidedDenoiser",
    "PerSampleNoise",
    "PixelDecoder",
    "SAMPLERS",
    "SampleOptions",
    "ShardPlan",
    "VaeDecoder",
    "assemble_samples",
    "draw_labels",
    "generate",
    "grid_array",
    "load_sampling_model",
    "make_decoder",
    "options_help",
    "parse_options",
    "run_sampling",
    "sample_generators",
    "sample_latents",
    "sample_seed",
    "save_grid",
    "save_pngs",
    "to_uint8",
]
