"""Flow matching vs DDPM: what the objective switch costs, measured side by side in one run.

Two comparisons, each with the variants interleaved round by round (so load from other users of
the machine hits both alike), medians over rounds, wall and process-CPU time:

  (a) training step: the same DiT + DTR (β = 0.8, same initial weights, same batch) trained through
      the `single` engine with `diffusion.objective=ddpm` (DiT's loss: ε-MSE + VB term) and with
      `diffusion.objective=flow` (SiT's Linear path, velocity MSE). Target: flow/ddpm ≤ 1.02.
  (b) sampling cost per model evaluation: DDPM ancestral sampling over N respaced steps vs an
      Euler ODE over N steps of the flow transport, both calling the same network; the time of
      each loop is divided by the number of network calls it made. Target: flow/ddpm ≤ 1.05.

    python benchmarks/flow.py [--model DiT-S/2] [--batch 4] [--reps 5] [--sample-steps 10]

Prints a table and writes benchmarks/results/flow.json.
"""
from __future__ import annotations

import time

import torch

from common import ContentionMeter, command_line, machine_info, median, step_parser, verdict, write_json

from dtr_scale.config import load_config
from dtr_scale.diffusion import create_diffusion
from dtr_scale.flow import Sampler, create_transport
from dtr_scale.parallel.process_group import DistEnv
from dtr_scale.train import build_training

TARGETS = {"train_step": 1.02, "per_model_call": 1.05}


def build_trainer(args, objective: str):
    cfg = load_config(None, [f"model.name={args.model}", "parallel.engine=single", "train.precision=fp32",
                             "model.routing.sharing_ratio=0.8", f"diffusion.objective={objective}"])
    latent_shape = (args.channels, args.input_size, args.input_size)
    return build_training(cfg, DistEnv(), torch.device("cpu"), latent_shape, num_classes=1000)


def timed(fn) -> dict:
    c0, w0 = time.process_time(), time.perf_counter()
    with ContentionMeter() as meter:
        calls = fn()
    return {"wall": time.perf_counter() - w0, "cpu": time.process_time() - c0, "calls": calls,
            "others_busy": meter.others}


def train_step(args, objective, engine, gen: torch.Generator):
    """One optimizer step on a fresh batch, as the training loop runs it."""

    def run():
        x = torch.randn(args.batch, args.channels, args.input_size, args.input_size, generator=gen)
        y = torch.randint(0, 1000, (args.batch,), generator=gen)
        t = objective.sample_timesteps(args.batch, gen)
        noise = torch.randn(x.shape, generator=gen)
        loss, _ = engine.module(x, t, y, noise)
        engine.backward(loss)
        engine.step()
        return 1
    return run


class CountingModel(torch.nn.Module):
    """The network, counting its calls (each sampler step may call it once or more)."""

    def __init__(self, dit):
        super().__init__()
        self.dit, self.calls = dit, 0

    def forward(self, x, t, **kwargs):
        self.calls += 1
        return self.dit(x, t, **kwargs)


def ddpm_loop(model: CountingModel, steps: int, shape, y):
    diffusion = create_diffusion(timestep_respacing=str(steps))

    @torch.no_grad()  # on the closure: that is what runs in the timed region
    def run():
        model.calls = 0
        diffusion.p_sample_loop(model, shape, noise=torch.randn(shape, generator=torch.Generator().manual_seed(0)),
                                model_kwargs={"y": y})
        return model.calls
    return run


def flow_loop(model: CountingModel, steps: int, shape, y):
    sample = Sampler(create_transport()).sample_ode(sampling_method="euler", num_steps=steps + 1)

    @torch.no_grad()
    def run():
        model.calls = 0
        sample(torch.randn(shape, generator=torch.Generator().manual_seed(0)), model, y=y)
        return model.calls
    return run


def interleave(variants: dict, reps: int, warmup: int) -> dict[str, list[dict]]:
    samples = {name: [] for name in variants}
    names = list(variants)
    for r in range(warmup + reps):
        for name in names[r % len(names):] + names[: r % len(names)]:
            row = timed(variants[name])
            if r >= warmup:
                samples[name].append(row)
    return samples


def ratio(samples, num, den, key="wall", per_call=False) -> float:
    def value(rows):
        return median(r[key] / (r["calls"] if per_call else 1) for r in rows)
    return value(samples[num]) / value(samples[den])


def main() -> None:
    p = step_parser(__doc__.split("\n\n")[0], "flow.json")
    p.add_argument("--sample-steps", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(0)
    ddpm_obj, ddpm_engine = build_trainer(args, "ddpm")
    flow_obj, flow_engine = build_trainer(args, "flow")
    train = interleave({"ddpm": train_step(args, ddpm_obj, ddpm_engine, gen),
                        "flow": train_step(args, flow_obj, flow_engine, gen)},
                       args.reps, args.warmup)

    shape = (args.batch, args.channels, args.input_size, args.input_size)
    y = torch.arange(args.batch) % 1000
    ddpm_model, flow_model = CountingModel(ddpm_obj.dit.eval()), CountingModel(flow_obj.dit.eval())
    sampling = interleave({"ddpm": ddpm_loop(ddpm_model, args.sample_steps, shape, y),
                           "flow_euler": flow_loop(flow_model, args.sample_steps, shape, y)}, args.reps, args.warmup)

    results = {
        "train_step": {"ratio": ratio(train, "flow", "ddpm"), "cpu_ratio": ratio(train, "flow", "ddpm", "cpu"),
                       "ddpm_s": median(r["wall"] for r in train["ddpm"]),
                       "flow_s": median(r["wall"] for r in train["flow"])},
        "per_model_call": {"ratio": ratio(sampling, "flow_euler", "ddpm", per_call=True),
                           "cpu_ratio": ratio(sampling, "flow_euler", "ddpm", "cpu", per_call=True),
                           "ddpm_calls": sampling["ddpm"][0]["calls"], "flow_calls": sampling["flow_euler"][0]["calls"],
                           "ddpm_s": median(r["wall"] for r in sampling["ddpm"]),
                           "flow_s": median(r["wall"] for r in sampling["flow_euler"])},
    }
    for key, limit in TARGETS.items():
        results[key]["target"] = f"<= {limit}"
        results[key]["pass"] = results[key]["ratio"] <= limit
    print(f"{'comparison':16s} {'flow/ddpm wall':>15s} {'cpu':>7s} {'target':>8s}")
    for key in TARGETS:
        r = results[key]
        print(f"{key:16s} {r['ratio']:15.3f} {r['cpu_ratio']:7.3f} {r['target']:>8s}  {verdict(r['pass'])}")
    others = [r["others_busy"] for rows in (*train.values(), *sampling.values()) for r in rows if r["others_busy"] is not None]
    write_json(args.out, {"command": command_line(), "machine": machine_info(), "args": vars(args),
                          "results": results, "others_busy_median": median(others) if others else None,
                          "raw": {"train": train, "sampling": sampling}})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
