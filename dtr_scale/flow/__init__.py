"""Flow matching (SiT's stochastic-interpolant transport): paths, training loss, ODE/SDE samplers.

    transport = create_transport("Linear", "velocity")
    loss = transport.training_losses(model, x1, model_kwargs={"y": y})["loss"].mean()
    sample = Sampler(transport).sample_ode(sampling_method="euler", num_steps=50)(z, model, y=y)[-1]
"""
from .paths import PATHS, GVPPath, LinearPath, VPPath, make_path
from .samplers import DIFFUSION_FORMS, LAST_STEPS, ODE_METHODS, SDE_METHODS, Sampler
from .transport import LOSS_WEIGHTS, PREDICTIONS, Transport, create_transport

__all__ = ["PATHS", "PREDICTIONS", "LOSS_WEIGHTS", "ODE_METHODS", "SDE_METHODS", "DIFFUSION_FORMS",
           "LAST_STEPS", "LinearPath", "GVPPath", "VPPath", "make_path", "Transport", "create_transport", "Sampler"]
