"""Thin entry script: same as `python -m dtr_scale.prep` (see README.md here).

    python data_prep/prep_latents.py --source digits --vae none --out data/digits16
    torchrun --nproc_per_node=8 data_prep/prep_latents.py --source imagefolder:DIR --vae VAE_DIR --out OUT
"""
import sys

from dtr_scale.prep import main

if __name__ == "__main__":
    sys.exit(main())
