"""dtr-scale: diffusion transformers with Denoising Task Routing, trained at cluster scale."""

__version__ = "0.1.0"
