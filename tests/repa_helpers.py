"""A tiny random DINOv2 (timm, 2 blocks, 64 wide: the smallest shape a DINOv2 has, 64-wide heads)
saved as safetensors, for REPA's tests to load through the real loader."""
import os

TINY_SHAPE = dict(depth=2, embed_dim=64, num_heads=1, img_size=112)  # 8 × 8 patches of 14 px


def tiny_encoder_file(folder, seed: int = 0) -> str:
    import timm
    import torch
    from safetensors.torch import save_file

    path = os.path.join(str(folder), "dinov2_tiny.safetensors")
    if not os.path.exists(path):
        torch.manual_seed(seed)
        vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, dynamic_img_size=True, **TINY_SHAPE)
        save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, path)
    return path


def repa_overrides(encoder_path: str, depth: int = 3) -> list[str]:
    return ["repa.enabled=true", "repa.encoder=dinov2-from-file", f"repa.encoder_weights={encoder_path}",
            f"repa.depth={depth}", "repa.projector_dim=64"]
