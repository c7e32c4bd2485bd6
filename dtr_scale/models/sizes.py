"""The named model sizes: DiT's family and LightningDiT's."""
from __future__ import annotations

# name -> (depth, hidden_size, num_heads). "T" is a tiny size for CPU tests and the demo.
DIT_SIZES = {
    "T": (6, 128, 4),
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}
DIT_PATCHES = (2, 4, 8)
# LightningDiT's names (its B/L/XL widths are DiT's; it adds 1.0B and 1.6B and patch 1). A name
# picks the size only: the block options are model.qk_norm / norm / mlp / pos_embed.
LIGHTNING_SIZES = {"B": DIT_SIZES["B"], "L": DIT_SIZES["L"], "XL": DIT_SIZES["XL"],
                   "1p0B": (24, 1536, 24), "1p6B": (28, 1792, 28)}
LIGHTNING_PATCHES = (1, 2)
_FAMILIES = {"DiT-": (DIT_SIZES, DIT_PATCHES), "LightningDiT-": (LIGHTNING_SIZES, LIGHTNING_PATCHES)}
DIT_MODELS = tuple(f"{f}{s}/{p}" for f, (sizes, patches) in _FAMILIES.items() for s in sizes for p in patches)


def parse_model_name(name: str) -> tuple[int, int, int, int]:
    """'DiT-L/2' -> (depth, hidden, heads, patch); unknown names list what is allowed."""
    try:
        family = next(f for f in _FAMILIES if name.startswith(f))
        sizes, patches = _FAMILIES[family]
        size, patch = name.removeprefix(family).split("/")
        depth, hidden, heads = sizes[size]
        if int(patch) not in patches:
            raise KeyError(patch)
    except (KeyError, ValueError, StopIteration):
        raise ValueError(f"model.name: unknown model {name!r}; allowed: {', '.join(DIT_MODELS)}") from None
    return depth, hidden, heads, int(patch)
