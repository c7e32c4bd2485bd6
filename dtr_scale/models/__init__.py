"""Routed DiT: model, routing masks, attention backends and weight loading."""
from .attention import ATTENTION_BACKENDS, HAS_XFORMERS
from .dit import DIT_MODELS, DiT, DiTBlock, create_model, parse_model_name
from .flops import dit_forward_flops, dit_train_flops
from .pretrained import load_pretrained, load_weights, official_state_dict, read_weights_file
from .routing import RoutingConfig, TaskRouter, dtr_mask_table, random_mask_tables, window_starts

__all__ = [
    "ATTENTION_BACKENDS",
    "DIT_MODELS",
    "DiT",
    "DiTBlock",
    "HAS_XFORMERS",
    "RoutingConfig",
    "TaskRouter",
    "create_model",
    "dit_forward_flops",
    "dit_train_flops",
    "dtr_mask_table",
    "load_pretrained",
    "load_weights",
    "official_state_dict",
    "parse_model_name",
    "random_mask_tables",
    "read_weights_file",
    "window_starts",
]
