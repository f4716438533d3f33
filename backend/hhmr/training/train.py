"""`hhmr train`: fit the GraphUNet x0-denoiser on synthetic hands, with checkpoints and resume."""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from hhmr.data.poses import PosePrior
from hhmr.device import pick_device
from hhmr.diffusion.ddim import DDIMSampler
from hhmr.diffusion.schedule import CosineSchedule
from hhmr.hand import load_hand_model
from hhmr.models import SCALE, X0Denoiser
from hhmr.models.conditions import DropoutConfig, drop_conditions
from hhmr.models.loading import build_denoiser, other_rig, read_weights
from hhmr.sampling.config import SamplingConfig
from hhmr.training.clock import RunClock
from hhmr.training.data import synthetic_batch
from hhmr.training.images import RenderedHands, concat_batches
from hhmr.training.losses import MeshLosses, timestep_weights

EVAL_SEED_OFFSET = 1_000_000  # training draws use seeds below this, evaluation above


def load_config(path: str | Path) -> dict:
    """A TOML training config; `configs/NAME.toml` also finds the shipped ones (prior, guide)
    from any folder."""
    path = Path(path)
    if not path.exists() and not path.is_absolute():
        shipped = Path(__file__).resolve().parents[1] / path
        path = shipped if shipped.exists() else path
    with open(path, "rb") as f:
        return tomllib.load(f)


def apply_overrides(config: dict, items: list[str]) -> dict:
    """`SECTION.KEY=VALUE` items (VALUE in TOML syntax: 0.5, true, "text") set into a copy
    of the config; raises ValueError on a malformed item or an unknown section."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for item in items:
        name, sep, value = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot or not key:
            raise ValueError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        if not isinstance(out.get(section), dict):
            raise ValueError(f"--set {item!r}: no section [{section}] in the config")
        try:
            out[section][key] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"--set {item!r}: VALUE is not TOML ({err})") from None
    return out


def training_timesteps(schedule: CosineSchedule, n: int, generator: torch.Generator,
                       focus: float = 0.0, steps: int = 10) -> torch.Tensor:
    """Uniform timesteps, a `focus` fraction of them replaced by the trailing grid that a
    `steps`-step sampler visits (10 steps: 999, 899, ..., 99). focus 0 draws exactly what
    earlier runs drew."""
    t = schedule.sample_timesteps(n, generator)
    if focus > 0:
        grid = DDIMSampler(schedule).set_timesteps(steps, "trailing")
        pick = torch.rand(n, generator=generator) < focus
        t = torch.where(pick, grid[torch.randint(len(grid), (n,), generator=generator)], t)
    return t


def loss_weights_per_timestep(net: torch.nn.Module, schedule: CosineSchedule,
                              tcfg: dict) -> torch.Tensor:
    """The loss weight of each training timestep [T] (train.t_weighting, "edm" unless
    set; "edm" needs the preconditioned denoiser, whose c_out it reads)."""
    kind = tcfg.get("t_weighting", "edm")
    t = torch.arange(schedule.num_train_steps)
    if kind == "uniform":
        return torch.ones(len(t))
    if not isinstance(net, X0Denoiser):
        raise ValueError(f"t_weighting {kind!r} needs model.sigma_data (the preconditioned net)")
    with torch.no_grad():
        c_out = net.coefficients(t.to(net.alpha_bar.device))[1].cpu()
    return timestep_weights(c_out, kind, tcfg.get("t_weight_max", 10.0))


def lr_at(step: int, cfg: dict, minutes: float = 0.0) -> float:
    """Warm-up, then a cosine to 5 % over the run's progress: the larger of the fractions of
    max_steps and of max_minutes done, so a run stopped by its time limit still anneals."""
    warm = cfg.get("warmup_steps", 0)
    if step < warm:
        return cfg["lr"] * (step + 1) / warm
    progress = (step - warm) / max(1, cfg["max_steps"] - warm)
    if cfg.get("max_minutes"):
        progress = max(progress, minutes / cfg["max_minutes"])
    progress = min(1.0, progress)
    return cfg["lr"] * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


class EMA:
    """Exponential moving average of a model's floating-point state (weights for sampling);
    the decay ramps up as (1 + step) / (10 + step) until it reaches `decay`."""

    def __init__(self, net: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        self.keys = [k for k, v in self.state.items() if v.is_floating_point()]

    def update(self, net: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        live = net.state_dict()
        torch._foreach_lerp_([self.state[k] for k in self.keys],
                             [live[k].detach() for k in self.keys], 1 - d)


def init_from(net: torch.nn.Module, weights: str | Path | dict) -> list[str]:
    """Start from another run's weights: every tensor of the same name and shape is copied.
    A new image projection (another encoder's width) starts at zero with its patch
    embedding equal to the null image, so the net begins exactly as the run it came from
    (DiffHand's zero-initialised condition). `weights`: a file or its loaded contents.
    Returns the names not copied."""
    src = (weights if isinstance(weights, dict) else read_weights(weights))["model"]
    own = net.state_dict()
    skipped = [k for k in own if k not in src or src[k].shape != own[k].shape]
    net.load_state_dict({k: src[k] for k in own if k not in skipped}, strict=False)
    with torch.no_grad():
        for name, module in net.named_modules():
            if name.endswith("conditions") and any(k.startswith(f"{name}.image.")
                                                   for k in skipped):
                module.image.weight.zero_()
                module.image.bias.zero_()
                module.patch_embedding.copy_(module.null_image)
    return skipped


def sampling_config(images: RenderedHands | None, init: str | Path | dict | None = None
                    ) -> SamplingConfig:
    """The sampling settings saved with new weights: those saved in the weights the run
    starts from (a fine-tune keeps its tuned tasks and the guide file they name), else the
    defaults; the image encoder is the one this run trains with, or none. `init`: a file
    or its loaded contents."""
    cfg = SamplingConfig()
    if init:
        cfg = SamplingConfig.from_dict(
            (init if isinstance(init, dict) else read_weights(init)).get("sampling"))
    return replace(cfg, photo=replace(cfg.photo,
                                      image_encoder=images.encoder if images else None))


def train(config: dict, out_dir: Path, resume: Path | None = None, device: str = "auto",
          max_steps: int | None = None, max_minutes: float | None = None,
          progress: bool = True, command: str = "") -> dict:
    """Train; writes out_dir/checkpoint.pt periodically and out_dir/final.pt at the end."""
    tcfg = dict(config["train"])
    if max_steps is not None:
        tcfg["max_steps"] = max_steps
    if max_minutes is not None:
        tcfg["max_minutes"] = max_minutes
    dev = pick_device(device)
    torch.manual_seed(tcfg["seed"])
    hand = load_hand_model()
    rig = hand.rig_digest()  # saved with the weights; loading them checks it
    net = build_denoiser(config["model"], hand)
    net.to(dev)
    prior = PosePrior(hand)
    schedule = CosineSchedule()
    fresh = resume is None or not Path(resume).exists()
    init = read_weights(tcfg["init"]) if fresh and tcfg.get("init") else None
    if init is not None:
        skipped = init_from(net, init)
        print(f"started from {tcfg['init']}; new: {', '.join(skipped) or 'nothing'}")
        if other_rig(init, hand):
            print("it was trained on another rig of this hand: this run fine-tunes it to "
                  "this one")
    # rendered hands with image tokens make `images.fraction` of every batch
    images = RenderedHands(config["images"], progress) if config.get("images") else None
    sampling = sampling_config(images, init).to_dict()
    n_img = round(tcfg["batch_size"] * config["images"]["fraction"]) if images else 0
    losses = MeshLosses(hand.keypoint_regressor.to(dev), hand.faces.to(dev), config["loss"])
    t_weights = loss_weights_per_timestep(net, schedule, tcfg).to(dev)
    dropout = DropoutConfig(**config.get("dropout", {}))
    opt = torch.optim.AdamW(net.parameters(), lr=tcfg["lr"], weight_decay=tcfg["weight_decay"])
    use_amp = dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    step, elapsed, wall_elapsed, history, stages = 0, 0.0, 0.0, [], []
    ckpt = None
    if not fresh:
        ckpt = torch.load(resume, map_location=dev, weights_only=False)
        if other_rig(ckpt, hand):
            raise ValueError(f"{resume} was trained on another rig of the hand: resume it with "
                             "the hand asset it started with (HHMR_WEIGHTS)")
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step, elapsed, history = ckpt["step"], ckpt["elapsed_s"], ckpt.get("history", [])
        sampling = ckpt.get("sampling", sampling)
        wall_elapsed = ckpt.get("wall_elapsed_s", elapsed)
        # the runs that led here: each command with the step and minutes it ended at
        stages = ckpt.get("stages") or [{"command": ckpt.get("command", "an earlier run"),
                                         "to_step": step, "minutes": round(elapsed / 60, 2)}]
    ema = EMA(net, tcfg["ema_decay"]) if tcfg.get("ema_decay") else None
    if ema is not None and ckpt is not None and ckpt.get("ema"):
        ema.state = ckpt["ema"]
    out_dir.mkdir(parents=True, exist_ok=True)
    clock = RunClock(elapsed, wall_elapsed)  # minutes count the time the CPUs were ours
    bar = tqdm(total=tcfg["max_steps"], initial=step, disable=not progress, unit="step",
               desc="train")
    running, interval = None, []

    def all_stages() -> list[dict]:
        """The earlier runs and this one, as far as it has got."""
        return stages + [{"command": command, "to_step": step,
                          "minutes": round(clock.minutes(), 2),
                          "wall_minutes": round(clock.wall_seconds() / 60, 2)}]

    def save(path: Path) -> None:
        """Write through a temporary file, so a run killed while saving keeps its last
        checkpoint whole."""
        tmp = path.with_suffix(".tmp")
        torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "step": step,
                    "ema": None if ema is None else ema.state,
                    "elapsed_s": clock.seconds(), "wall_elapsed_s": clock.wall_seconds(),
                    "config": config,
                    "history": history, "hand": hand.name, "hand_rig": rig, "command": command,
                    "stages": all_stages(), "num_vertices": hand.num_vertices,
                    "sampling": sampling}, tmp)
        os.replace(tmp, path)

    while step < tcfg["max_steps"]:
        if clock.minutes() > tcfg["max_minutes"]:
            break
        gen = torch.Generator().manual_seed(tcfg["seed"] * 100_000 + step)
        batch = synthetic_batch(hand, prior, tcfg["batch_size"] - n_img, gen)
        if n_img:
            batch = concat_batches(batch, images.batch(n_img, gen))
        cond = drop_conditions(batch.conditions, dropout, gen)
        x0 = (batch.vertices / SCALE).to(dev)
        cond = type(cond)(**{k: None if v is None else v.to(dev)
                             for k, v in cond.__dict__.items()})
        t = training_timesteps(schedule, x0.shape[0], gen, tcfg.get("t_focus", 0.0),
                               tcfg.get("t_focus_steps", 10)).to(dev)
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        x_t = schedule.add_noise(x0, noise, t)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tcfg, clock.minutes())
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
            pred = net(x_t, t, cond)
        terms = losses(pred.float(), x0, t_weights[t])
        opt.zero_grad(set_to_none=True)
        scaler.scale(terms["total"]).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), tcfg["grad_clip"])
        scaler.step(opt)
        scaler.update()
        if ema is not None:
            ema.update(net, step)
        step += 1
        vals = {k: float(v.detach()) for k, v in terms.items()}
        running = vals if running is None else {k: 0.98 * running[k] + 0.02 * vals[k]
                                                for k in vals}
        interval.append(vals)
        bar.update(1)
        bar.set_postfix(loss=f"{running['total']:.4f}", v_mm=f"{running['vertex'] * 100:.2f}")
        if step % tcfg["checkpoint_every"] == 0 or step == tcfg["max_steps"]:
            mean = {k: sum(v[k] for v in interval) / len(interval) for k in interval[0]}
            history.append({"step": step, "minutes": clock.minutes(),
                            "wall_minutes": clock.wall_seconds() / 60,
                            **{k: round(v, 5) for k, v in mean.items()}})
            interval = []
            save(out_dir / "checkpoint.pt")
    bar.close()
    save(out_dir / "checkpoint.pt")
    # the shipped weights are the moving average when there is one
    weights = net.state_dict() if ema is None else ema.state
    final = {"model": {k: v.cpu() for k, v in weights.items()}, "config": config,
             "ema_decay": None if ema is None else ema.decay,
             "step": step, "minutes": clock.minutes(),
             "wall_minutes": clock.wall_seconds() / 60,
             "history": history, "hand": hand.name, "hand_rig": rig,
             "num_vertices": hand.num_vertices,
             "device": str(dev), "command": command, "stages": all_stages(),
             "sampling": sampling}
    torch.save(final, out_dir / "final.pt")
    return {"steps": step, "minutes": final["minutes"], "last": history[-1] if history else {}}
