"""InceptionV3 features, TF-2015-graph compatible (torch-fidelity's port), from LOCAL weights.

Clusters run offline, so the weights are never downloaded here: the file must already exist at
`weights_path` and its sha256 must match (`expected_sha256`, a full digest or a prefix of at
least 8 hex digits). The default is the prefix `6726825d` that torch-fidelity and pytorch-fid put
in the file name (`weights-inception-2015-12-05-6726825d.pth`, `pt_inception-2015-12-05-
6726825d.pth`: torch.hub's convention, name-<first 8 hex digits of the file's sha256>). Pin the
full digest with `--inception-sha256` once you have checked your copy.

Features per image (ADM evaluator names → torch-fidelity modules):
- 'pool'    pool_3 (2048): torch-fidelity feature '2048'.                    FID, P/R
- 'logits'  softmax/logits/MatMul, pool_3 · W without bias (1008): '2048' →
            'logits_unbiased'.                                                IS
- 'spatial' mixed_6/conv (17×17×192, the ReLU output of the 1×1 branch of TF block mixed_6),
            first 7 channels, flattened in NHWC order → 2023. torch-fidelity's conversion
            table maps TF `mixed_6/conv` to `Mixed_6d.branch1x1`; a forward hook on that
            BasicConv2d captures its (post-ReLU) output. Because branch1x1 is the first part
            of the block's concat, these are also the first 7 channels of Mixed_6d's 768-ch
            output.                                                           sFID

Input: uint8 images in [0, 255], any size (the port resizes to 299 like the TF graph). fp32
inference with TF32 disabled for matmul and cuDNN: TF32 perturbs features enough to move FID.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ..errors import UserError
from ..file_hash import file_sha256

TORCH_FIDELITY_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)
DEFAULT_WEIGHTS_SHA256 = "6726825d"
DEFAULT_WEIGHTS_PATH = os.path.join(
    os.path.expanduser("~"), ".cache", "dtr_scale", "weights-inception-2015-12-05-6726825d.pth"
)
SPATIAL_MODULE = "Mixed_6d.branch1x1"  # = TF mixed_6/conv
SPATIAL_CHANNELS = 7


class InceptionWeightsError(UserError, RuntimeError):
    """The Inception weights file is missing or is not the expected file."""


def default_weights_path() -> str:
    return os.environ.get("DTR_SCALE_INCEPTION_WEIGHTS", DEFAULT_WEIGHTS_PATH)


def verify_weights(path: str, expected_sha256: str | None) -> str:
    """Check that `path` exists and matches `expected_sha256`; return its full sha256."""
    if not os.path.isfile(path):
        raise InceptionWeightsError(
            f"Inception weights not found at {path}. The evaluator never downloads (clusters run "
            f"offline): on a machine with internet access download\n  {TORCH_FIDELITY_WEIGHTS_URL}\n"
            f"(pytorch-fid's pt_inception-2015-12-05-6726825d.pth has the same hash prefix) and put it at "
            f"{path}, or point --inception-weights / eval.inception_weights / "
            "$DTR_SCALE_INCEPTION_WEIGHTS at your copy."
        )
    digest = file_sha256(path)
    if expected_sha256:
        expected = expected_sha256.strip().lower()
        if len(expected) < 8 or any(c not in "0123456789abcdef" for c in expected):
            raise InceptionWeightsError(
                f"expected sha256 {expected_sha256!r} must be hex, at least 8 digits (a prefix or the full digest)"
            )
        if not digest.startswith(expected):
            raise InceptionWeightsError(
                f"Inception weights {path} have sha256 {digest}, which does not match the expected "
                f"{expected}. The file is corrupt or a different network; FID from it would not be "
                f"comparable. Re-download {TORCH_FIDELITY_WEIGHTS_URL}, or pass the right "
                "--inception-sha256 if you really mean to use other weights."
            )
    return digest


def disable_tf32() -> None:
    """Full fp32 matmuls/convolutions (global switch: the evaluator process does nothing else)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


class InceptionFeatureExtractor:
    """Callable: uint8 NHWC images → {'pool', 'logits', 'spatial'} float32 tensors on `device`."""

    name = "inception-v3-tf2015"

    def __init__(self, weights_path: str | None = None, expected_sha256: str | None = DEFAULT_WEIGHTS_SHA256,
                 device: torch.device | str = "cpu"):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.weights_path = os.path.abspath(weights_path or default_weights_path())
        self.weights_sha256 = verify_weights(self.weights_path, expected_sha256)
        disable_tf32()
        self.device = torch.device(device)
        self.model = FeatureExtractorInceptionV3(
            "inception-v3-compat",
            ["2048", "logits_unbiased"],
            feature_extractor_weights_path=self.weights_path,
            feature_extractor_internal_dtype="float32",
        ).to(self.device)
        self._spatial = None
        self.model.get_submodule(SPATIAL_MODULE).register_forward_hook(self._grab_spatial)

    def _grab_spatial(self, module, inputs, output) -> None:
        # (N, 192, 17, 17) → first 7 channels → NHWC → (N, 17·17·7), the order TF's reshape gives.
        self._spatial = output[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(output.shape[0], -1)

    def dims(self, image_shape: tuple) -> dict[str, int]:
        return {"pool": 2048, "logits": 1008, "spatial": 17 * 17 * SPATIAL_CHANNELS}

    @property
    def identity(self) -> dict:
        return {
            "name": self.name,
            "implementation": "torch_fidelity.FeatureExtractorInceptionV3",
            "weights_path": self.weights_path,
            "weights_sha256": self.weights_sha256,
            "features": {"pool": "pool_3 (2048)", "logits": "logits_unbiased (1008)",
                         "spatial": f"mixed_6/conv = {SPATIAL_MODULE}, first {SPATIAL_CHANNELS} ch, NHWC (2023)"},
            "precision": "fp32, tf32 off",
        }

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise ValueError(f"expected uint8 NHWC images, got {x.dtype} {tuple(x.shape)}")
        if x.shape[-1] == 1:  # grayscale: the TF graph takes RGB, so replicate the channel
            x = x.expand(-1, -1, -1, 3)
        x = x.permute(0, 3, 1, 2).contiguous()
        self._spatial = None
        pool, logits = self.model(x)
        return {"pool": pool.float(), "logits": logits.float(), "spatial": self._spatial.float()}
