"""The flow-matching objective ("transport" in SiT's words): training loss and the conversions
the samplers need, for a model that predicts velocity, noise or score along one of the paths.

Time runs from t = 0 (pure noise x0) to t = 1 (data x1) and the model is called as
`model(x_t, t, **model_kwargs)` with float t, as in SiT. A DiT built with `learn_sigma=True`
returns 2C channels; only the first C are the prediction (SiT's model drops the rest itself).
"""
from __future__ import annotations

import torch

from ..diffusion.likelihood import mean_flat
from .paths import PATHS, VPPath, expand_like, make_path

PREDICTIONS = ("velocity", "noise", "score")
LOSS_WEIGHTS = (None, "velocity", "likelihood")


def default_eps(path_type: str, prediction: str, train_eps, sample_eps) -> tuple[float, float]:
    """SiT's choice of how far to stay away from the ends of [0, 1].

    VP is singular at t = 1 (σ → 0): train 1e-5, sample 1e-3 away. Linear and GVP with a noise or
    score model are singular at both ends: 1e-3. A velocity model on Linear/GVP is regular
    everywhere: 0 (an explicit value is ignored there, as in SiT). SiT leaves sample_eps unset
    when only train_eps is given (and then fails); here it falls back to the default instead.
    """
    if path_type == "VP":
        return (1e-5 if train_eps is None else train_eps), (1e-3 if sample_eps is None else sample_eps)
    if prediction != "velocity":
        return (1e-3 if train_eps is None else train_eps), (1e-3 if sample_eps is None else sample_eps)
    return 0, 0


class Transport:
    def __init__(self, *, path_type: str = "Linear", prediction: str = "velocity", loss_weight=None,
                 train_eps=None, sample_eps=None):
        if prediction not in PREDICTIONS:
            raise ValueError(f"diffusion.flow.prediction={prediction!r}: expected one of {', '.join(PREDICTIONS)}")
        if loss_weight not in LOSS_WEIGHTS:
            raise ValueError(f"diffusion.flow.loss_weight={loss_weight!r}: expected none, velocity or likelihood")
        self.path_type, self.prediction, self.loss_weight = path_type, prediction, loss_weight
        self.path = make_path(path_type)
        self.train_eps, self.sample_eps = default_eps(path_type, prediction, train_eps, sample_eps)

    # ---- time range -------------------------------------------------------------------------
    def interval(self, *, sde: bool = False, diffusion_form: str = "SBDM", reverse: bool = False,
                 sampling: bool = False, last_step_size: float = 0.0) -> tuple[float, float]:
        """[t0, t1] that training (sampling=False) or a sampler integrates over."""
        eps = self.sample_eps if sampling else self.train_eps
        t0, t1 = 0, 1
        end = 1 - eps if (not sde or last_step_size == 0) else 1 - last_step_size
        if isinstance(self.path, VPPath):
            t1 = end
        elif self.prediction != "velocity" or sde:
            # Linear/GVP: a score or noise model (or the SBDM diffusion, a_t ~ 1/t) blows up at t=0.
            t0 = eps if (diffusion_form == "SBDM" and sde) or self.prediction != "velocity" else 0
            t1 = end
        if reverse:
            t0, t1 = 1 - t0, 1 - t1
        return t0, t1

    # ---- training ---------------------------------------------------------------------------
    def training_losses(self, model, x1: torch.Tensor, model_kwargs=None, t=None, x0=None) -> dict:
        """{"loss": (N,), "pred": model output}. An explicit `t` or `x0` replaces that draw; the
        other is drawn in SiT's order (x0 first, then t)."""
        model_kwargs = model_kwargs or {}
        if x0 is None:
            x0 = torch.randn_like(x1)
        if t is None:
            t0, t1 = self.interval()
            t = torch.rand((x1.shape[0],)) * (t1 - t0) + t0
        t = t.to(x1)
        xt, ut = self.path.interpolate(t, x0, x1)
        out = self.prediction_of(model(xt, t, **model_kwargs), xt)
        if self.prediction == "velocity":
            loss = mean_flat((out - ut) ** 2)
        else:
            te = expand_like(t, xt)
            _, var = self.path.score_split(xt, te)
            sigma_t, _ = self.path.sigma(te)
            weight = {"velocity": (var / sigma_t) ** 2, "likelihood": var / sigma_t**2, None: 1}[self.loss_weight]
            target = (out - x0) if self.prediction == "noise" else (out * sigma_t + x0)
            loss = mean_flat(weight * target**2)
        return {"loss": loss, "pred": out}

    @staticmethod
    def prediction_of(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The first C channels: a learn_sigma DiT's second half is unused by flow matching."""
        return out[:, : x.shape[1]] if out.shape[1] != x.shape[1] else out

    # ---- conversions (model output -> velocity / score) -------------------------------------
    def score_from_velocity(self, v, x, t):
        t = expand_like(t, x)
        alpha_t, d_alpha_t = self.path.alpha(t)
        sigma_t, d_sigma_t = self.path.sigma(t)
        inv_ratio = alpha_t / d_alpha_t
        return (inv_ratio * v - x) / (sigma_t**2 - inv_ratio * d_sigma_t * sigma_t)

    def noise_from_velocity(self, v, x, t):
        t = expand_like(t, x)
        alpha_t, d_alpha_t = self.path.alpha(t)
        sigma_t, d_sigma_t = self.path.sigma(t)
        inv_ratio = alpha_t / d_alpha_t
        return (inv_ratio * v - x) / (inv_ratio * d_sigma_t - sigma_t)

    def velocity_from_score(self, score, x, t):
        a_x, b = self.path.score_split(x, expand_like(t, x))
        return a_x + b * score

    def velocity_and_score(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor, need_score: bool = True):
        """(probability-flow velocity, score) from one model output, so an SDE step costs one
        model evaluation (SiT evaluates the model twice, for the same numbers)."""
        out = self.prediction_of(out, x)
        if self.prediction == "velocity":
            return out, (self.score_from_velocity(out, x, t) if need_score else None)
        if self.prediction == "noise":
            score = out / -self.path.sigma(expand_like(t, x))[0]
        else:
            score = out
        return self.velocity_from_score(score, x, t), score


def create_transport(path_type="Linear", prediction="velocity", loss_weight=None, train_eps=None, sample_eps=None):
    """SiT's entry point, same names and defaults."""
    if path_type not in PATHS:
        raise ValueError(f"diffusion.flow.path={path_type!r}: expected one of {', '.join(PATHS)}")
    return Transport(path_type=path_type, prediction=prediction, loss_weight=loss_weight,
                     train_eps=train_eps, sample_eps=sample_eps)


__all__ = ["Transport", "create_transport", "PREDICTIONS", "LOSS_WEIGHTS", "mean_flat"]
