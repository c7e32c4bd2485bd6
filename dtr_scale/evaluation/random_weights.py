"""Randomly initialised Inception weights in torch-fidelity's state-dict layout.

For tests and benchmarks only: they exercise the whole Inception path (loading, hash check,
resize, hooks, shapes, speed) on machines without the real 100 MB file. Metrics from them mean
nothing. torchvision's InceptionV3 (no aux head, 1008 classes) has the same parameter names and
shapes as torch-fidelity's port, so its state dict is the skeleton; the strict load in
FeatureExtractorInceptionV3 checks that the layouts still agree.

Initialisation: He-normal convolutions and identity batch-norm (running mean 0, variance 1) keep
activations O(1) through the 94 conv layers, so the features are finite and vary between images.
"""
from __future__ import annotations

import torch

from .files import atomic_torch_save


def random_inception_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    import torchvision

    skeleton = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008,
                                               init_weights=False)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in skeleton.state_dict().items():
        if key.endswith("conv.weight"):
            fan_in = value[0].numel()
            new = torch.randn(value.shape, generator=gen) * (2.0 / fan_in) ** 0.5
        elif key.endswith("bn.weight") or key.endswith("bn.running_var"):
            new = torch.ones_like(value)
        elif key.endswith("bn.bias"):
            new = 0.1 * torch.randn(value.shape, generator=gen)
        elif key.endswith("bn.running_mean"):
            new = torch.zeros_like(value)
        elif key == "fc.weight":
            new = torch.randn(value.shape, generator=gen) / value.shape[1] ** 0.5
        elif key == "fc.bias":
            new = 0.01 * torch.randn(value.shape, generator=gen)
        else:  # num_batches_tracked and anything torchvision may add: keep as built
            new = value.clone()
        state[key] = new.to(value.dtype)
    return state


def write_random_inception_weights(path: str, seed: int = 0) -> str:
    """Save random weights to `path` atomically; return the path."""
    atomic_torch_save(path, random_inception_state_dict(seed))
    return path
