"""Discrete Gaussian diffusion with ε-prediction (ADM / DiT semantics, written from the formulas).

Notation (Ho et al. 2020; Nichol & Dhariwal 2021): α_t = 1 - β_t, ᾱ_t = Π_{s<=t} α_s,
q(x_t | x_0) = N(√ᾱ_t x_0, (1-ᾱ_t) I), posterior q(x_{t-1} | x_t, x_0) = N(μ̃_t, β̃_t I) with
β̃_t = β_t (1-ᾱ_{t-1}) / (1-ᾱ_t) and μ̃_t = c1 x_0 + c2 x_t,
c1 = β_t √ᾱ_{t-1} / (1-ᾱ_t), c2 = (1-ᾱ_{t-1}) √α_t / (1-ᾱ_t).

Model output: ε̂ (C channels), or with ``learn_sigma`` ε̂ and v (2C channels) where the
reverse variance is the learned-range interpolation log Σ = (v+1)/2 · log β_t + (1-v)/2 · log β̃_t.
Without ``learn_sigma`` the variance is DiT's default fixed choice, the "large" one: β_t, with β̃_1
at t = 0 (so that log stays finite).

Timesteps are 0-based indices 0..T-1 (index 0 is the least noisy step).
"""

from __future__ import annotations

import numpy as np
import torch

from .likelihood import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .loss_weighting import loss_weight_table
from .reverse_process import ReverseProcessMixin

_LN2 = float(np.log(2.0))


class GaussianDiffusion(ReverseProcessMixin):
    """ε-prediction diffusion over a given β schedule (float64 constants, gathered per call)."""

    def __init__(
        self,
        betas: np.ndarray,
        learn_sigma: bool = True,
        loss_weighting: str = "constant",
        snr_gamma: float = 5.0,
        p2_gamma: float = 1.0,
        p2_k: float = 1.0,
    ):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size == 0:
            raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
        if not ((betas > 0).all() and (betas < 1).all()):
            # β = 1 makes ᾱ = 0 from there on: x_0 is unrecoverable and 1/√ᾱ is infinite.
            raise ValueError("betas must lie in the open interval (0, 1)")
        self.betas = betas
        self.num_timesteps = int(betas.shape[0])
        self.learn_sigma = bool(learn_sigma)
        self.loss_weighting = loss_weighting

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)

        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # β̃_0 = 0: clip the log by reusing β̃_1 at t = 0 (only ever used through the learned range).
        first = self.posterior_variance[1] if self.num_timesteps > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(first, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        )
        # Fixed "large" variance (used when the variance is not learned).
        self.fixed_large_variance = np.append(first, betas[1:])
        self.log_betas = np.log(betas)

        self.loss_weights = loss_weight_table(
            loss_weighting, self.alphas_cumprod, snr_gamma, p2_gamma, p2_k
        )
        self._tables: dict = {}

    # ------------------------------------------------------------------ helpers
    def _gather(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Constant ``name`` at timesteps t, shaped (N, 1, ..., 1) to broadcast against ``like``.

        Result dtype is ``like``'s dtype, promoted to at least float32: bf16/fp16 constants would
        round ᾱ and 1/√ᾱ (up to ~160 at t=T-1) badly. Tables are cached per (device, dtype).
        """
        dtype = torch.promote_types(like.dtype, torch.float32)
        key = (name, like.device, dtype)
        table = self._tables.get(key)
        if table is None:
            table = torch.from_numpy(getattr(self, name)).to(device=like.device, dtype=dtype)
            self._tables[key] = table
        values = table[t.to(device=like.device, dtype=torch.long)]
        return values.reshape(values.shape + (1,) * (like.dim() - values.dim()))

    def _wrap_model(self, model):
        """Hook for SpacedDiffusion (maps spaced indices back to original timesteps)."""
        return model

    # --------------------------------------------------------- forward process
    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor):
        """Mean, variance and log-variance of q(x_t | x_0)."""
        mean = self._gather("sqrt_alphas_cumprod", t, x_start) * x_start
        variance = 1.0 - self._gather("alphas_cumprod", t, x_start)
        log_variance = torch.log(variance)
        return mean, variance.expand_as(mean), log_variance.expand_as(mean)

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None):
        """Draw x_t ~ q(x_t | x_0) = √ᾱ_t x_0 + √(1-ᾱ_t) ε."""
        if noise is None:
            noise = torch.randn_like(x_start)
        if noise.shape != x_start.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != x_start shape {tuple(x_start.shape)}")
        return (
            self._gather("sqrt_alphas_cumprod", t, x_start) * x_start
            + self._gather("sqrt_one_minus_alphas_cumprod", t, x_start) * noise
        )

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        if x_start.shape != x_t.shape:
            raise ValueError(f"x_start shape {tuple(x_start.shape)} != x_t shape {tuple(x_t.shape)}")
        mean = (
            self._gather("posterior_mean_coef1", t, x_t) * x_start
            + self._gather("posterior_mean_coef2", t, x_t) * x_t
        )
        variance = self._gather("posterior_variance", t, x_t).expand_as(x_t)
        log_variance = self._gather("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        return mean, variance, log_variance

    # --------------------------------------------------------- reverse process
    def _split_output(self, model_output: torch.Tensor, x: torch.Tensor):
        """(ε̂, v or None) from the raw model output, with a clear error for a wrong width."""
        channels = x.shape[1]
        expected = 2 * channels if self.learn_sigma else channels
        if model_output.shape[0] != x.shape[0] or model_output.shape[1] != expected \
                or model_output.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"model output shape {tuple(model_output.shape)} does not fit input "
                f"{tuple(x.shape)}: expected {expected} channels "
                f"({'ε and variance (learn_sigma=True)' if self.learn_sigma else 'ε only (learn_sigma=False)'}); "
                "create the model and the diffusion with the same learn_sigma"
            )
        if self.learn_sigma:
            eps, v = torch.split(model_output, channels, dim=1)
            return eps, v
        return model_output, None

    def _predict_xstart_from_eps(self, x_t, t, eps):
        return (
            self._gather("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self._gather("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        )

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return (
            self._gather("sqrt_recip_alphas_cumprod", t, x_t) * x_t - pred_xstart
        ) / self._gather("sqrt_recipm1_alphas_cumprod", t, x_t)

    def p_mean_variance(self, model, x, t, clip_denoised: bool = False, model_kwargs=None):
        """Mean and variance of p(x_{t-1} | x_t), plus the predicted x_0 and ε.

        Returns a dict with ``mean``, ``variance``, ``log_variance``, ``pred_xstart``, ``eps``.
        """
        model = self._wrap_model(model)
        model_output = model(x, t, **(model_kwargs or {}))
        eps, v = self._split_output(model_output, x)
        if v is not None:
            min_log = self._gather("posterior_log_variance_clipped", t, x)
            max_log = self._gather("log_betas", t, x)
            frac = (v + 1.0) / 2.0  # v in [-1, 1] maps onto [log β̃_t, log β_t]
            log_variance = frac * max_log + (1.0 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            variance = self._gather("fixed_large_variance", t, x).expand_as(x)
            log_variance = torch.log(variance)
        pred_xstart = self._predict_xstart_from_eps(x, t, eps)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1.0, 1.0)
            eps = self._predict_eps_from_xstart(x, t, pred_xstart)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {
            "mean": mean,
            "variance": variance,
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
            "eps": eps,
        }

    # ------------------------------------------------------------------ losses
    def _vb_terms_bpd(self, model, x_start, x_t, t, clip_denoised=False, model_kwargs=None):
        """L_{t-1} in bits per dimension: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0,
        the decoder NLL -log p(x_0 | x_1) for t = 0. Shape (N,)."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / _LN2
        decoder_nll = -mean_flat(
            discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
        ) / _LN2
        return {"output": torch.where(t == 0, decoder_nll, kl), "pred_xstart": out["pred_xstart"]}

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None):
        """Per-sample loss terms for x_0 = x_start at timesteps t (indices of this process).

        Returns ``mse`` (weighted ε-MSE), ``vb`` (VB term for the learned variance, with the mean
        output frozen so that only the variance learns from it; zeros without learn_sigma) and
        ``loss`` = mse + vb, each of shape (N,). The VB term is not rescaled (DiT's "MSE" type).
        """
        model = self._wrap_model(model)
        if t.dim() != 1 or t.shape[0] != x_start.shape[0]:
            raise ValueError(f"t must have shape ({x_start.shape[0]},), got {tuple(t.shape)}")
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        model_output = model(x_t, t, **(model_kwargs or {}))
        eps, v = self._split_output(model_output, x_t)

        weights = self._gather("loss_weights", t, eps).reshape(-1)  # (N,)
        mse = weights * mean_flat((noise - eps) ** 2)
        if v is not None:
            frozen = torch.cat([eps.detach(), v], dim=1)
            vb = self._vb_terms_bpd(
                lambda *_args, _out=frozen, **_kwargs: _out, x_start, x_t, t, clip_denoised=False
            )["output"]
        else:
            vb = torch.zeros_like(mse)
        return {"mse": mse, "vb": vb, "loss": mse + vb}
