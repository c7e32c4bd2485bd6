"""Reverse-process samplers: DDPM ancestral (Ho et al. 2020) and DDIM (Song et al. 2021).

Kept apart from gaussian_diffusion.py (a mixin over its constants) so that each file stays small.
`sample` is the entry point of `dtr_scale.sampling.generate`; the loops are ADM's API.

Randomness: every Gaussian draw goes through ``noise_fn(x)`` when given (default
``torch.randn_like``), including the initial x_T when ``noise`` is not passed. The distributed
sampler passes per-sample generators through it so that sample i depends only on (seed, i),
whatever the batch composition or the number of ranks.
"""

from __future__ import annotations

import torch


def _default_noise(x: torch.Tensor) -> torch.Tensor:
    return torch.randn_like(x)


def _infer_device(model, device):
    """Where x_T lives when neither ``noise`` nor ``device`` is given: the model's device."""
    if device is not None:
        return torch.device(device)
    owner = getattr(model, "__self__", model)  # bound methods such as model.forward_with_cfg
    parameters = getattr(owner, "parameters", None)
    if callable(parameters):
        for p in parameters():
            return p.device
    return torch.device("cpu")


class ReverseProcessMixin:
    """Needs p_mean_variance, q_sample-style constants and num_timesteps from GaussianDiffusion."""

    def sample(self, denoiser, shape, *, y: torch.Tensor, noise_fn, device, sampler: str = "ddpm",
               eta: float = 0.0) -> torch.Tensor:
        """x_0 by DDPM ancestral sampling or DDIM (η = `eta`), every draw through `noise_fn`: the
        call `generate` makes of every objective's sampler."""
        common = dict(clip_denoised=False, model_kwargs={"y": y}, device=device, noise_fn=noise_fn)
        if sampler == "ddpm":
            return self.p_sample_loop(denoiser, shape, **common)
        return self.ddim_sample_loop(denoiser, shape, eta=eta, **common)

    # ------------------------------------------------------------------ common
    def _initial_noise(self, model, shape, noise, device, noise_fn):
        if noise is not None:
            if tuple(noise.shape) != tuple(shape):
                raise ValueError(f"noise shape {tuple(noise.shape)} != requested shape {tuple(shape)}")
            return noise
        placeholder = torch.empty(tuple(shape), device=_infer_device(model, device))
        return (noise_fn or _default_noise)(placeholder)

    def _timestep_iterator(self, progress: bool):
        indices = list(range(self.num_timesteps))[::-1]
        if progress:
            from tqdm.auto import tqdm

            return tqdm(indices)
        return indices

    # -------------------------------------------------------------------- DDPM
    def p_sample(self, model, x, t, clip_denoised=False, model_kwargs=None, noise_fn=None):
        """One ancestral step x_t → x_{t-1} ~ N(μ_θ, Σ_θ); no noise is added at t = 0."""
        out = self.p_mean_variance(model, x, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        noise = (noise_fn or _default_noise)(x)
        nonzero = (t != 0).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def p_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=False,
                                  model_kwargs=None, progress=False, device=None, noise_fn=None):
        """Yield each step's {"sample", "pred_xstart"} from t = T-1 down to 0."""
        img = self._initial_noise(model, shape, noise, device, noise_fn)
        for i in self._timestep_iterator(progress):
            t = torch.full((img.shape[0],), i, device=img.device, dtype=torch.long)
            with torch.no_grad():
                out = self.p_sample(model, img, t, clip_denoised=clip_denoised,
                                    model_kwargs=model_kwargs, noise_fn=noise_fn)
            yield out
            img = out["sample"]

    def p_sample_loop(self, model, shape, noise=None, clip_denoised=False, model_kwargs=None,
                      progress=False, device=None, noise_fn=None):
        """Final x_0 of DDPM ancestral sampling over this process's (possibly respaced) steps."""
        final = None
        for final in self.p_sample_loop_progressive(
            model, shape, noise=noise, clip_denoised=clip_denoised, model_kwargs=model_kwargs,
            progress=progress, device=device, noise_fn=noise_fn,
        ):
            pass
        return final["sample"]

    # -------------------------------------------------------------------- DDIM
    def ddim_sample(self, model, x, t, clip_denoised=False, model_kwargs=None, eta=0.0, noise_fn=None):
        """One DDIM step (Song et al. 2021, eq. 12):
        x_{t-1} = √ᾱ_{t-1} x̂_0 + √(1-ᾱ_{t-1}-σ²) ε̂ + σ z,
        σ = η √((1-ᾱ_{t-1})/(1-ᾱ_t)) √(1-ᾱ_t/ᾱ_{t-1}).  η = 0 is deterministic."""
        out = self.p_mean_variance(model, x, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        eps = out["eps"]
        alpha_bar = self._gather("alphas_cumprod", t, x)
        alpha_bar_prev = self._gather("alphas_cumprod_prev", t, x)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) \
            * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        sample = out["pred_xstart"] * torch.sqrt(alpha_bar_prev) \
            + torch.sqrt((1 - alpha_bar_prev - sigma ** 2).clamp(min=0.0)) * eps
        if eta != 0:
            # With η = 0 no draw is made at all, so the step consumes no random numbers.
            nonzero = (t != 0).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
            sample = sample + nonzero * sigma * (noise_fn or _default_noise)(x)
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=False,
                                     model_kwargs=None, eta=0.0, progress=False, device=None,
                                     noise_fn=None):
        """Yield each DDIM step's {"sample", "pred_xstart"} from t = T-1 down to 0."""
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta!r}")
        img = self._initial_noise(model, shape, noise, device, noise_fn)
        for i in self._timestep_iterator(progress):
            t = torch.full((img.shape[0],), i, device=img.device, dtype=torch.long)
            with torch.no_grad():
                out = self.ddim_sample(model, img, t, clip_denoised=clip_denoised,
                                       model_kwargs=model_kwargs, eta=eta, noise_fn=noise_fn)
            yield out
            img = out["sample"]

    def ddim_sample_loop(self, model, shape, noise=None, clip_denoised=False, model_kwargs=None,
                         eta=0.0, progress=False, device=None, noise_fn=None):
        """Final x_0 of DDIM sampling over this process's (possibly respaced) steps."""
        final = None
        for final in self.ddim_sample_loop_progressive(
            model, shape, noise=noise, clip_denoised=clip_denoised, model_kwargs=model_kwargs,
            eta=eta, progress=progress, device=device, noise_fn=noise_fn,
        ):
            pass
        return final["sample"]
