"""Task API over the trained diffusion prior: generate, inpaint, refit3d, fit2d.

Composes the GraphUNet denoiser, the cosine schedule, the DDIM sampler and a guidance operator;
each task returns `Hypotheses` (vertices [n, V, 3] and joints [n, 21, 3] in metres, a score per
hypothesis, timings). Hypotheses of one request are drawn in one batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from hhmr.diffusion import AutoGuidance, CosineSchedule, DDIMSampler, DPMSolverSampler
from hhmr.diffusion.guidance import (
    GuidanceOperator,
    JointOperator,
    ProjectionOperator,
    VertexMaskOperator,
    bone_influence,
    joint_influence,
)
from hhmr.hand import load_hand_model
from hhmr.hand.base import HandModel
from hhmr.mesh.geometry import unique_edges
from hhmr.models import Conditions, GraphUNet
from hhmr.models.conditions import normalize_keypoints
from hhmr.models.graph_unet import Context
from hhmr.models.tracing import TracedDenoiser
from hhmr.paths import weights_dir
from hhmr.training.data import SCALE

# progress(step, total), called before each sampling step; it may raise to cancel the run
Progress = Callable[[int, int], None]

DEFAULT_WEIGHTS = "hhmr_prior.pt"
# the weaker net of the same kind that autoguides the default weights (AUTOGUIDANCE); paired
# with them, so other weights get no guide unless one is given
DEFAULT_GUIDE = "hhmr_guide.pt"
# The sampler's settings below were picked on held-out seed 100, never the evaluation seed.
# `python tools/ablations.py` measures each against its alternatives (the variant named in
# brackets) into weights/eval/ablations.json; docs/diffusion.md gives the tables.

# x_t-space guidance scales per task (fit2d: 0.0002 of {0.0001, 0.0002, 0.0005, 0.001, 0.002}
# on 20 hands with earlier weights)
DEFAULT_GUIDANCE = {"inpaint": 0.005, "refit3d": 0.01, "fit2d": 0.0002}
# fit2d fits a global rotation to the keypoints inside the projection operator
FIT2D_SOLVE_ROTATION = True
# Per-task guidance settings, keyed by task ("inpaint+replace": inpainting that also replaces
# the kept vertices, the default).
# Largest guidance move per step, RMS over a sample's vertices in model units (0.1 m): keeps a
# wild early fit2d prediction from throwing the sample away; with replacement the kept region
# is exact anyway and uncapped moves roughen the rest [replace_cap_none]
MAX_GUIDANCE_STEP: dict[str, float] = {"fit2d": 0.05, "inpaint+replace": 0.05}
# x_t-space guided moves at the last step, each one more pass through the net with
# gradients [x_t_space against x_t_space_final_iters_1]; fit2d makes one
FINAL_GUIDANCE_ITERS: dict[str, int] = {"inpaint": 2, "refit3d": 2}
# Where guidance acts, per task key: "x_t" is HHMR's (the gradient of the task loss through
# the net, w.r.t. x_t: a forward and backward pass per step); "x0" moves the net's prediction
# itself by gradient steps on the task loss and keeps its noise estimate (Manifold Preserving
# Guided Diffusion, He et al. 2024; for the vertex mask one step of the default scale is
# DDNM's exact projection), so a guided step costs one forward pass [x_t_space]. Inpainting
# with replacement stays in x_t: replacement already fixes the kept region, all that x0
# guidance would touch; guidance through the net shapes the free region to fit it
# [replacement_alone].
GUIDANCE_SPACE: dict[str, str] = {"inpaint": "x0", "inpaint+replace": "x_t", "refit3d": "x0",
                                  "fit2d": "x0"}
# x0-space default scale and gradient steps per sampling step, per task family
X0_GUIDANCE: dict[str, tuple[float, int]] = {"inpaint": (0.005, 1), "refit3d": (0.005, 10),
                                             "fit2d": (0.00005, 20)}
# x0 guidance through the joints takes its gradient in joint space and spreads it over the
# surface: "bones" (`bone_influence`: each vertex follows the end keypoints of the bones it
# is skinned to), "smooth" (`joint_influence`: the regressor's weights spread by 4 rounds of
# neighbour averaging) or None (the raw gradient, which moves only the few vertices the
# regressor reads) [joint_influence_smooth, joint_influence_none]
X0_JOINT_INFLUENCE: str | None = "bones"
# fit2d's x0 guidance solves its rotation and camera at the first of its gradient steps per
# sampling step only and holds them for the others, so its 20 small steps cost little
# [refit_camera, which took n=16 from about 0.7 to 1.0 s on this CPU]
X0_HOLD_CAMERA = True
# guidance on the first (noisiest) fraction of the steps only: x_t guidance costs a pass
# back through the net per step, and for inpainting with replacement the early steps matter
# most [replace_fraction_*]; 0.6 brings n=16 under a second on this CPU (`hhmr bench`)
GUIDED_FRACTION: dict[str, float] = {"inpaint+replace": 0.6}
# x0 guidance takes back and halves a step that raised a sample's loss, with at most this
# many extra evaluations per sampling step (`descend`): without it, strengths a few times
# the tuned one made refit3d diverge to non-finite meshes
X0_RETRIES = 8
# Hypothesis 0 of a request starts from the mean of the noise (x_T = 0) instead of a draw:
# with deterministic DDIM it lands near the centre of the hands the conditions allow, the
# best single guess (the first step predicts the conditional mean from no noise at all, and
# the steps after it refine that mean instead of a random draw's course); hypotheses 1..
# start from random noise as before [random_first]. Off for generation and inpainting, where
# a hypothesis that repeats across seeds would cost diversity.
CENTRAL_FIRST: dict[str, bool] = {"generate": False, "inpaint": False, "refit3d": True,
                                  "fit2d": True}
# batch sizes a server traces at start: one hypothesis, and the add-on's default of four
WARM_BATCH_SIZES = (1, 4)
# timestep spacing of unguided and x0-guided runs (see _sample; x_t-guided runs use
# "linspace") [spacing_linspace]
SPACING = "front"
# solver of unguided and x0-guided runs: "dpm++2m" (DPM-Solver++(2M), second order from the
# net's last two predictions, same cost) or "ddim". Runs that change the sample between
# steps (x_t guidance, inpainting's replacement) or add noise (eta > 0) always use DDIM:
# the multistep extrapolation would mix in a prediction from before the change
# [solver_ddim, spacing_trailing]
SOLVER = "dpm++2m"
SOLVERS = ("ddim", "dpm++2m")  # what SOLVER may be
# Tasks whose "front" runs end at this timestep (or at the spacing's own last one, T/n - 1,
# when that is lower) and return the net's x0 there; none by default. Ending generation
# below t=99 spreads hands more, but through DPM-Solver++'s extrapolation over the long last
# step, which overshoots: with an exact denoiser, Gaussian data comes out 19 % too wide at
# t=10 (`python tools/solver_scale.py`) [generate_last_*]
FINAL_TIMESTEP: dict[str, int] = {}
# Autoguidance per task (hhmr.diffusion.autoguidance): x0 = D_guide + w (D - D_guide) with
# the weaker guide net on timesteps t_min..t_max, when the pipeline has a guide. Generation
# only: the net alone generates hands narrower than the data (docs/diffusion.md); weight and
# interval picked with `python tools/autoguidance_sweep.py` (weights/eval/autoguidance.json)
AUTOGUIDANCE: dict[str, AutoGuidance] = {"generate": AutoGuidance(1.9, 250)}


def _rms_factor(step: torch.Tensor, max_rms: float) -> torch.Tensor:
    """Per-sample factor [B, 1, 1] that brings an update [B, V, 3] to RMS at most max_rms."""
    rms = step.square().mean((1, 2), keepdim=True).sqrt()
    return max_rms / rms.clamp_min(max_rms)


def descend(loss_of: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor,
            step_of: Callable[[torch.Tensor], torch.Tensor],
            change_of: Callable[[torch.Tensor], torch.Tensor],
            move_of: Callable[[torch.Tensor], torch.Tensor], scale: float, iters: int,
            max_step: float | None = None, retries: int | None = None) -> torch.Tensor:
    """x0 guidance's gradient descent: `iters` steps c = scale * step_of(grad_z loss_of(z))
    per sample from z = start, z moving by change_of(sum of c) and the mesh by move_of(c)
    (capped at RMS max_step). A step that raises its sample's loss is taken back and halved
    (at most `retries` extra evaluations, default X0_RETRIES), so strengths beyond the
    stable range converge instead of diverging. Returns the sum of the steps taken."""
    retries = X0_RETRIES if retries is None else retries

    def evaluate(total: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            z = (start + change_of(total)).detach().requires_grad_(True)
            loss = loss_of(z)
            return loss.detach(), torch.autograd.grad(loss.sum(), z)[0]

    total = torch.zeros_like(start)
    loss, grad = evaluate(total)
    lr = torch.full((start.shape[0], 1, 1), scale, dtype=start.dtype, device=start.device)
    taken = torch.zeros(start.shape[0], dtype=torch.long, device=start.device)
    for _ in range(iters + retries):
        active = taken < iters
        if not active.any():
            break
        step = lr * step_of(grad) * active[:, None, None]
        if max_step is not None:
            step = step * _rms_factor(move_of(step), max_step)
        trial_loss, trial_grad = evaluate(total + step)
        ok = active & ((trial_loss < loss) | (trial_loss <= 1e-12))
        if bool(ok.all()):  # the usual case at tuned strengths
            total, loss, grad, taken = total + step, trial_loss, trial_grad, taken + 1
            continue
        keep = ok[:, None, None]
        total = torch.where(keep, total + step, total)
        loss, grad = torch.where(ok, trial_loss, loss), torch.where(keep, trial_grad, grad)
        lr = torch.where((active & ~ok)[:, None, None], lr * 0.5, lr)
        taken = taken + ok.long()
    return total


def clip_rms(step: torch.Tensor, max_rms: float) -> torch.Tensor:
    """Scale each sample's update [B, V, 3] down so its RMS is at most max_rms."""
    return step * _rms_factor(step, max_rms)


@dataclass
class Hypotheses:
    vertices: torch.Tensor  # [n, V, 3] metres
    joints: torch.Tensor  # [n, 21, 3] metres
    scores: torch.Tensor  # [n], higher is better
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def order(self) -> list[int]:
        """Showing order: the central hypothesis (extra "central", CENTRAL_FIRST) first, the
        sampler's best single guess, then the others by score, highest first."""
        order = self.scores.argsort(descending=True, stable=True).tolist()
        central = self.extra.get("central")
        if central is not None and int(central.sum()) == 1:
            first = int(central.nonzero()[0, 0])
            order = [first] + [i for i in order if i != first]
        return order


class HandDiffusionPipeline:
    def __init__(self, net: GraphUNet, hand: HandModel, device: str | torch.device = "cpu",
                 trace: bool | None = None, guide: torch.nn.Module | None = None) -> None:
        """`guide`: a weaker net of the same kind for autoguidance (AUTOGUIDANCE)."""
        self.device = torch.device(device)
        # unguided steps run the net through frozen TorchScript traces (same results, less
        # overhead; by default on the CPU, where it was measured); traces copy the weights:
        # set trace=False while changing them
        self.trace = self.device.type == "cpu" if trace is None else trace
        self.net, self.traced = self._prepare(net)
        self.guide, self.guide_traced = self._prepare(guide) if guide is not None else \
            (None, None)
        self.hand = hand.to(self.device)
        self.schedule = CosineSchedule()
        self.regressor = hand.keypoint_regressor.to(self.device)
        edges = unique_edges(hand.faces.cpu().numpy())
        self.edges = torch.from_numpy(edges.astype(np.int64)).to(self.device)
        v = hand.v_template.to(self.device)
        # called as callback(step, total) before each step; may raise to abort (cancel)
        self.callback: Callable[[int, int], None] | None = None
        self.template_edge_len = (v[self.edges[:, 0]] - v[self.edges[:, 1]]).norm(dim=-1)
        self._influence: dict[str, torch.Tensor] = {}  # per kind, see X0_JOINT_INFLUENCE

    def _prepare(self, net: torch.nn.Module) -> tuple[torch.nn.Module, TracedDenoiser | None]:
        """The net on the device in eval mode, and its trace for unguided steps (a
        template-frame denoiser turns x_t before and after the net: the net inside is
        traced)."""
        net = net.to(self.device).eval()
        inner = net.net if getattr(net, "frame", "camera") != "camera" else net
        return net, TracedDenoiser(inner) if self.trace else None

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str = "cpu",
                        trace: bool | None = None, guide: str | Path | bool | None = None
                        ) -> HandDiffusionPipeline:
        """Weights from `path` (default: the shipped ones). `guide`: the autoguidance net's
        weights; None takes the shipped guide with the shipped weights (if it is there) and
        none with others, False none."""
        hand = load_hand_model()
        shipped = weights_dir() / DEFAULT_WEIGHTS
        path = Path(path) if path else shipped
        net = _load_net(path, hand)
        if guide is None:
            default = weights_dir() / DEFAULT_GUIDE
            is_shipped = shipped.exists() and path.samefile(shipped)  # _load_net found path
            guide = default if is_shipped and default.exists() else False
        guide_net = _load_net(Path(guide), hand) if guide is not False else None
        return cls(net, hand, device, trace, guide_net)

    def warm_up(self, batch_sizes: tuple[int, ...] = WARM_BATCH_SIZES) -> float:
        """Build the frozen traces for these batch sizes now (a server's first requests
        would otherwise pay 0.3-0.8 s each); returns the seconds it took."""
        t0 = time.perf_counter()
        if self.traced is not None:
            for n in batch_sizes:
                self.generate(n, steps=1)
        return time.perf_counter() - t0

    def joint_influence(self, kind: str) -> torch.Tensor:
        """The hand's per-keypoint influence [V, 21], "bones" or "smooth" (computed once)."""
        if kind not in self._influence:
            if kind == "bones":
                w = bone_influence(self.regressor, self.hand.weights, self.hand.v_template)
            elif kind == "smooth":
                w = joint_influence(self.regressor, self.edges, 4)
            else:
                raise ValueError(f"joint influence must be 'bones' or 'smooth', got {kind!r}")
            self._influence[kind] = w
        return self._influence[kind]

    # ---- core sampler -------------------------------------------------------------------
    def sample(self, cond: Conditions, batch: int, operator: GuidanceOperator | None = None,
               steps: int = 10, eta: float = 0.0, guidance_scale: float = 0.0,
               seed: int = 0, known: tuple[torch.Tensor, torch.Tensor] | None = None,
               x0_iters: int = 0) -> torch.Tensor:
        """DDIM from noise to x0 (metres) for `batch` samples of one seed."""
        return self._sample(cond, [_Noise(seed, batch)], operator, steps, eta, guidance_scale,
                            known, x0_iters=x0_iters)

    def _sample(self, cond: Conditions, noises: list[_Noise],
                operator: GuidanceOperator | None, steps: int, eta: float,
                guidance_scale: float, known: tuple[torch.Tensor, torch.Tensor] | None,
                max_step: float | None = None, final_iters: int = 1, x0_iters: int = 0,
                guided_fraction: float | None = None, final_t: int | None = None,
                autoguide: AutoGuidance | None = None) -> torch.Tensor:
        """DPM-Solver++(2M) or DDIM (SOLVER) with optional guidance (each move capped at
        `max_step` RMS; in x_t space with `final_iters` moves at the last step, or in x0 space
        with `x0_iters` gradient steps on each prediction; on the first `guided_fraction` of
        the steps only, if given; "front" runs end at `final_t` if that is earlier),
        autoguidance by the guide net on the unguided steps where `autoguide` is active and,
        for inpainting, replacement of `known` = (x_obs [B, V, 3] metres, keep [B, V]) at
        each step. Each block of the batch draws its noise from its own seed, so batching
        requests changes their results by float rounding alone (batch sizes take different
        CPU kernels)."""
        v = self.hand.num_vertices
        batch = sum(nz.count for nz in noises)

        def randn() -> torch.Tensor:
            return torch.cat([nz.draw((v, 3)) for nz in noises]).to(self.device)

        x = randn()
        cond = Conditions(**{k: None if t is None else t.to(self.device)
                             for k, t in cond.__dict__.items()})
        guided = operator is not None and guidance_scale > 0
        plain, context = self._unguided(self.net, self.traced, cond, batch)
        if autoguide is not None:
            if self.guide is None:
                raise ValueError("autoguidance needs a guide net (HandDiffusionPipeline(guide=))")
            guide_plain, guide_context = self._unguided(self.guide, self.guide_traced, cond,
                                                        batch)
        # x_t-guided runs end at t=0, where the net is nearly the identity, so the last
        # guidance move lands on the output as computed; the others end on the net's x0 at
        # t=T/n ("trailing"; x0 guidance then corrects that x0 itself): a last step to t=0
        # only re-injects the net's noise estimate, which roughened generated and inpainted
        # hands [spacing_linspace in weights/eval/ablations.json]
        x_t_guided = guided and x0_iters == 0
        multistep = SOLVER == "dpm++2m" and not x_t_guided and known is None and eta == 0
        sampler = DPMSolverSampler(self.schedule) if multistep else \
            DDIMSampler(self.schedule, eta=eta)
        spacing = "linspace" if x_t_guided else SPACING
        T = self.schedule.num_train_steps
        last = None if final_t is None or spacing != "front" else \
            min(final_t, round(T / steps) - 1)
        timesteps = sampler.set_timesteps(steps, spacing, last).tolist()

        def guidance_move(x: torch.Tensor, tt: torch.Tensor) -> tuple[torch.Tensor, ...]:
            """x0 and the guidance move -s grad_x ||P f(x) - P x_obs||^2 (capped)."""
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                x0 = self.net(x_in, tt, context)
                loss = operator.loss(x0 * SCALE).sum()
                move = -guidance_scale * torch.autograd.grad(loss, x_in)[0]
            return x0.detach(), move if max_step is None else clip_rms(move, max_step)

        influence = self.joint_influence(X0_JOINT_INFLUENCE) if guided and x0_iters > 0 and \
            X0_JOINT_INFLUENCE is not None and \
            isinstance(operator, JointOperator | ProjectionOperator) else None

        def x0_move(x0: torch.Tensor) -> torch.Tensor:
            """Guidance on the net's prediction itself: x0_iters gradient steps of
            ||P x0 - P x_obs||^2 (`descend`), no pass back through the net. An operator that
            reads only the joints J x0 takes its steps on the 21 joints (the vertex gradient
            J^T grad_J, preconditioned by the influence W: x0 -= s W (J W)^T grad_J), and the
            surface moves once, by W times their sum."""
            if influence is None:
                return descend(lambda z: operator.loss(z * SCALE), x0, lambda g: -g,
                               lambda c: c, lambda c: c, guidance_scale, x0_iters, max_step)
            jw = self.regressor @ influence  # [21, 21]
            calls = 0

            def joint_loss(z: torch.Tensor) -> torch.Tensor:
                nonlocal calls
                if isinstance(operator, ProjectionOperator):
                    # the camera (rotation included) is solved once per sampling step
                    operator.hold_camera = X0_HOLD_CAMERA and calls > 0
                calls += 1
                return operator.joint_loss(z * SCALE)

            total = descend(joint_loss, self.regressor @ x0, lambda g: -(jw.T @ g),
                            lambda c: jw @ c, lambda c: influence @ c, guidance_scale,
                            x0_iters, max_step)
            if isinstance(operator, ProjectionOperator):
                operator.hold_camera = False
            return influence @ total

        for i, t in enumerate(timesteps):
            if self.callback is not None:
                self.callback(i, len(timesteps))
            tt = torch.full((batch,), t, device=self.device)
            now = guided and (guided_fraction is None or i < guided_fraction * len(timesteps))
            if now and x0_iters == 0:
                x0, move = guidance_move(x, tt)
            else:
                with torch.no_grad():
                    x0 = plain(x, tt, context)
                    if autoguide is not None and autoguide.active(t):
                        x0 = autoguide.combine(x0, guide_plain(x, tt, guide_context))
            eps_noise = randn() if eta > 0 else None
            x_next = sampler.step(x0, t, x, noise=eps_noise)
            if now and x0_iters > 0:
                # the corrected prediction with the net's noise estimate kept
                prev = sampler.previous(t)
                ab_prev = float(self.schedule.alpha_bar(torch.tensor(prev))) if prev >= 0 \
                    else 1.0
                x_next = x_next + ab_prev ** 0.5 * x0_move(x0)
            elif now:
                x_next = x_next + move
                if i == len(timesteps) - 1:
                    for _ in range(final_iters - 1):
                        x_next = x_next + guidance_move(x_next, tt)[1]
            x = x_next
            if known is not None:
                obs, keep = known[0].to(self.device) / SCALE, known[1].to(self.device)
                prev = sampler.previous(t)
                if prev >= 0:
                    obs = self.schedule.add_noise(obs, randn(), torch.full((batch,), prev))
                x = torch.where(keep[..., None] > 0, obs, x)
        return x.detach() * SCALE

    @staticmethod
    def _unguided(net: torch.nn.Module, traced: TracedDenoiser | None, cond: Conditions,
                  batch: int) -> tuple[Callable[..., torch.Tensor], object]:
        """The callable for unguided steps, (x_t, t, context) -> x0, through the frozen trace
        when there is one for this kind of net, and its context: what the conditions give
        every step (GraphUNet: the tokens' keys and values; other nets take the conditions
        themselves)."""
        prepare = getattr(net, "context", None)
        with torch.no_grad():
            context = prepare(cond, batch) if prepare is not None else cond
        if traced is not None and getattr(net, "frame", "camera") != "camera":
            return partial(net, inner=traced), context
        if traced is not None and isinstance(context, Context):
            return traced, context
        return net, context

    def run(self, plans: list[Plan], progress: Progress | None = None) -> list[Hypotheses]:
        """Run several prepared requests; compatible ones share one batch on the device.
        `progress(step, total)` is called before each sampling step and may raise to cancel;
        it is installed as `callback` for this call only."""
        saved, self.callback = self.callback, progress
        try:
            return self._run(plans)
        finally:
            self.callback = saved

    def _run(self, plans: list[Plan]) -> list[Hypotheses]:
        out: dict[int, Hypotheses] = {}
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(plans):
            groups.setdefault(p.key(), []).append(i)
        for idx in groups.values():
            t0 = time.perf_counter()
            ps = [plans[i] for i in idx]
            cond = _cat_conditions([p.cond for p in ps])
            op = ps[0].make_operator(self, [p.op for p in ps])
            known = None
            if ps[0].known is not None:
                known = (torch.cat([p.known[0] for p in ps]), torch.cat([p.known[1] for p in ps]))
            task = ps[0].kind.split("/")[0] + ("+replace" if known is not None else "")
            noises = [_Noise(p.seed, p.n, p.central) for p in ps]
            verts = self._sample(cond, noises, op, ps[0].steps,
                                 ps[0].eta, ps[0].scale, known, MAX_GUIDANCE_STEP.get(task),
                                 FINAL_GUIDANCE_ITERS.get(task, 1), ps[0].x0_iters,
                                 GUIDED_FRACTION.get(task), FINAL_TIMESTEP.get(task),
                                 ps[0].autoguide)
            parts = verts.split([p.n for p in ps])
            for i, p, v in zip(idx, ps, parts, strict=True):
                h = p.finish(v)
                if p.central:  # which hypothesis started from the noise's mean
                    h.extra["central"] = torch.arange(p.n) == 0
                h.timings.update(total_ms=(time.perf_counter() - t0) * 1000,
                                 batched_requests=float(len(ps)))
                out[i] = h
        return [out[i] for i in range(len(plans))]

    def _hyp(self, verts: torch.Tensor, scores: torch.Tensor, **extra: torch.Tensor
             ) -> Hypotheses:
        joints = self.regressor @ verts
        return Hypotheses(verts.cpu(), joints.cpu(), scores.cpu(), {},
                          {k: v.cpu() for k, v in extra.items()})

    def regularity(self, verts: torch.Tensor) -> torch.Tensor:
        """Plausibility score: minus the mean relative edge-length change from the template."""
        e = self.edges
        lens = (verts[:, e[:, 0]] - verts[:, e[:, 1]]).norm(dim=-1)
        return -((lens - self.template_edge_len) / self.template_edge_len).abs().mean(-1)

    # ---- tasks: plan_* validates and prepares, the task methods run one plan -------------
    @staticmethod
    def guidance(task: str, scale: float | None = None, space: str | None = None,
                 strength: float | None = None) -> tuple[float, int]:
        """Guidance scale and x0-space gradient steps per sampling step (0: x_t space) for a
        task key ("inpaint", "inpaint+replace", "refit3d", "fit2d"): `scale` as given, or
        `strength` times the tuned scale of the space (1 tuned, 0 none); None picks the
        defaults."""
        if scale is not None and strength is not None:
            raise ValueError("give a guidance scale or a guidance strength, not both")
        space = space or GUIDANCE_SPACE[task]
        family = task.split("+")[0]
        if space == "x0":
            default, iters = X0_GUIDANCE[family]
        elif space == "x_t":
            default, iters = DEFAULT_GUIDANCE[family], 0
        else:
            raise ValueError(f"guidance space must be 'x_t' or 'x0', got {space!r}")
        if scale is None:
            scale = default * (1.0 if strength is None else float(strength))
        return scale, iters

    @staticmethod
    def central(task: str, central_first: bool | None) -> bool:
        """Whether hypothesis 0 starts from the noise's mean: as asked, else the task's
        default (CENTRAL_FIRST)."""
        return CENTRAL_FIRST[task] if central_first is None else bool(central_first)

    def autoguidance(self, task: str, weight: float | None = None) -> AutoGuidance | None:
        """A task's autoguidance: the default (AUTOGUIDANCE) when the pipeline has a guide
        net, or `weight` on the default's timesteps (1: off); None when off."""
        default = AUTOGUIDANCE.get(task)
        if weight is None:
            return default if self.guide is not None else None
        auto = AutoGuidance(float(weight), *((default.t_min, default.t_max) if default
                                             else (0, self.schedule.num_train_steps - 1)))
        if auto.weight == 1.0:  # the net alone
            return None
        if self.guide is None:
            raise ValueError("autoguidance needs a guide net: none is loaded")
        return auto

    def plan_generate(self, n: int = 4, steps: int = 10, seed: int = 0, eta: float = 0.0,
                      central_first: bool | None = None, autoguidance: float | None = None
                      ) -> Plan:
        return Plan("generate", n, steps, seed, 0.0, eta, Conditions(), {}, None,
                    lambda v: self._hyp(v, self.regularity(v)),
                    central=self.central("generate", central_first),
                    autoguide=self.autoguidance("generate", autoguidance))

    def generate(self, n: int = 4, steps: int = 10, seed: int = 0, eta: float = 0.0,
                 central_first: bool | None = None, autoguidance: float | None = None,
                 progress: Progress | None = None) -> Hypotheses:
        """n unconditional hands (wrist at the origin, random orientations). `autoguidance`:
        the weight w of x0 = D_guide + w (D - D_guide), default AUTOGUIDANCE's when a guide
        net is loaded; 1 turns it off."""
        return self.run([self.plan_generate(n, steps, seed, eta, central_first,
                                            autoguidance)], progress)[0]

    def plan_inpaint(self, vertices, keep_mask, n: int = 4, steps: int = 10,
                     guidance_scale: float | None = None, seed: int = 0, replace: bool = True,
                     eta: float = 0.0, guidance_space: str | None = None,
                     central_first: bool | None = None, guidance_strength: float | None = None
                     ) -> Plan:
        vertices = _as_tensor(vertices, (self.hand.num_vertices, 3), "vertices")
        keep = torch.as_tensor(np.asarray(keep_mask)).reshape(-1).float()
        if keep.shape[0] != self.hand.num_vertices:
            raise ValueError(f"keep_mask must have {self.hand.num_vertices} entries")
        offset = self.regressor[0].cpu() @ vertices  # the wrist
        obs = vertices - offset
        s, x0_iters = self.guidance("inpaint+replace" if replace else "inpaint", guidance_scale,
                                    guidance_space, guidance_strength)

        def finish(v: torch.Tensor) -> Hypotheses:
            v = v + offset.to(v)
            return self._hyp(v, self.regularity(v))

        return Plan("inpaint", n, steps, seed, s, eta, Conditions(),
                    {"target": obs[None].repeat(n, 1, 1), "keep": keep[None].repeat(n, 1)},
                    (obs[None].repeat(n, 1, 1), keep[None].repeat(n, 1)) if replace else None,
                    finish, x0_iters, self.central("inpaint", central_first))

    def inpaint(self, vertices, keep_mask, n: int = 4, steps: int = 10,
                guidance_scale: float | None = None, seed: int = 0, replace: bool = True,
                eta: float = 0.0, guidance_space: str | None = None,
                central_first: bool | None = None, guidance_strength: float | None = None,
                progress: Progress | None = None) -> Hypotheses:
        """Keep the vertices where keep_mask is true, regenerate the rest."""
        return self.run([self.plan_inpaint(vertices, keep_mask, n, steps, guidance_scale,
                                           seed, replace, eta, guidance_space,
                                           central_first, guidance_strength)], progress)[0]

    def plan_refit3d(self, joints21, joint_mask=None, n: int = 4, steps: int = 10,
                     guidance_scale: float | None = None, seed: int = 0, eta: float = 0.0,
                     guidance_space: str | None = None, central_first: bool | None = None,
                     guidance_strength: float | None = None) -> Plan:
        joints = _as_tensor(joints21, (21, 3), "joints21")
        mask = torch.ones(21) if joint_mask is None else \
            torch.as_tensor(np.asarray(joint_mask)).float()
        mask = mask.reshape(21)
        if mask.sum() == 0:
            raise ValueError("joint_mask selects no joint")
        wrist_known = bool(mask[0] > 0)
        centre = joints[0] if wrist_known else (mask[:, None] * joints).sum(0) / mask.sum()
        rel = joints - centre
        s, x0_iters = self.guidance("refit3d", guidance_scale, guidance_space,
                                    guidance_strength)

        def finish(v: torch.Tensor) -> Hypotheses:
            # place each hypothesis on the known joints (best translation)
            m, r = mask.to(v), rel.to(v)
            pj = self.regressor @ v
            shift = ((m[None, :, None] / m.sum()) * (r[None] - pj)).sum(1, keepdim=True)
            v = v + shift + centre.to(v)
            err = ((self.regressor @ v - joints.to(v)[None]).norm(dim=-1) * m).sum(-1) / m.sum()
            return self._hyp(v, -err * 1000)

        cond = Conditions(joints3d=(rel / SCALE)[None].repeat(n, 1, 1),
                          joints3d_mask=mask[None].repeat(n, 1))
        return Plan("refit3d" + ("" if wrist_known else "/aligned"), n, steps, seed, s, eta,
                    cond, {"target": rel[None].repeat(n, 1, 1), "mask": mask[None].repeat(n, 1)},
                    None, finish, x0_iters, self.central("refit3d", central_first))

    def refit3d(self, joints21, joint_mask=None, n: int = 4, steps: int = 10,
                guidance_scale: float | None = None, seed: int = 0, eta: float = 0.0,
                guidance_space: str | None = None, central_first: bool | None = None,
                guidance_strength: float | None = None, progress: Progress | None = None
                ) -> Hypotheses:
        """Meshes whose regressed joints match a (partial) 3D skeleton [21, 3] in metres."""
        return self.run([self.plan_refit3d(joints21, joint_mask, n, steps, guidance_scale,
                                           seed, eta, guidance_space, central_first,
                                           guidance_strength)], progress)[0]

    def plan_fit2d(self, keypoints2d, confidence=None, K=None, n: int = 4, steps: int = 10,
                   guidance_scale: float | None = None, seed: int = 0, eta: float = 0.0,
                   guidance_space: str | None = None, central_first: bool | None = None,
                   guidance_strength: float | None = None) -> Plan:
        kp = _as_tensor(keypoints2d, (21, 2), "keypoints2d")
        conf = torch.ones(21) if confidence is None else \
            torch.as_tensor(np.asarray(confidence)).float()
        conf = conf.reshape(21).clamp(0, 1)
        if (conf > 0).sum() < 4:
            raise ValueError("fit2d needs at least 4 keypoints with confidence > 0")
        Kt = None if K is None else _as_tensor(K, (3, 3), "K")
        s, x0_iters = self.guidance("fit2d", guidance_scale, guidance_space, guidance_strength)
        op_in = {"keypoints": kp[None].repeat(n, 1, 1), "confidence": conf[None].repeat(n, 1),
                 "K": None if Kt is None else Kt[None].repeat(n, 1, 1)}

        def finish(v: torch.Tensor) -> Hypotheses:
            op = ProjectionOperator(self.regressor, *(None if x is None else x.to(v)
                                                      for x in op_in.values()),
                                    solve_rotation=FIT2D_SOLVE_ROTATION)
            projected, solved = op.solve(v)
            v = op.rotate(v)
            err = ((projected - kp.to(v)[None]).norm(dim=-1) * conf.to(v)).sum(-1) / conf.sum()
            if Kt is not None:
                return self._hyp(v + solved[:, None], -err, transl=solved)
            return self._hyp(v, -err, weak_scale=solved[0], weak_transl=solved[1])

        cond = Conditions(keypoints2d=normalize_keypoints(kp[None], conf[None]).repeat(n, 1, 1),
                          keypoints2d_conf=conf[None].repeat(n, 1))
        return Plan("fit2d" + ("/K" if Kt is not None else "/weak"), n, steps, seed, s, eta,
                    cond, op_in, None, finish, x0_iters, self.central("fit2d", central_first))

    def fit2d(self, keypoints2d, confidence=None, K=None, n: int = 4, steps: int = 10,
              guidance_scale: float | None = None, seed: int = 0, eta: float = 0.0,
              guidance_space: str | None = None, central_first: bool | None = None,
              guidance_strength: float | None = None, progress: Progress | None = None
              ) -> Hypotheses:
        """Meshes matching 2D keypoints [21, 2] (pixels). With intrinsics K [3, 3] the result
        is in the camera frame; without, wrist-relative with a weak-perspective fit."""
        return self.run([self.plan_fit2d(keypoints2d, confidence, K, n, steps, guidance_scale,
                                         seed, eta, guidance_space, central_first,
                                         guidance_strength)], progress)[0]


@dataclass
class _Noise:
    """A block of the batch that draws its noise from its own seed."""

    seed: int
    count: int
    central: bool = False  # the first draw's first row is the noise's mean, zero
    generator: torch.Generator = field(init=False)
    drawn: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    def draw(self, shape: tuple[int, ...]) -> torch.Tensor:
        z = torch.randn(self.count, *shape, generator=self.generator)
        if self.central and self.drawn == 0:
            z[0] = 0.0
        self.drawn += 1
        return z


@dataclass
class Plan:
    """A validated request ready to sample: conditions and operator inputs for n samples."""

    kind: str  # "generate", "inpaint", "refit3d[/aligned]", "fit2d/K" or "fit2d/weak"
    n: int
    steps: int
    seed: int
    scale: float
    eta: float
    cond: Conditions
    op: dict[str, torch.Tensor | None]
    known: tuple[torch.Tensor, torch.Tensor] | None
    finish: Callable[[torch.Tensor], Hypotheses]
    x0_iters: int = 0  # guidance in x0 space with this many gradient steps; 0: x_t space
    central: bool = False  # hypothesis 0 starts from the noise's mean (CENTRAL_FIRST)
    autoguide: AutoGuidance | None = None  # autoguidance by the pipeline's guide net

    def key(self) -> tuple:
        """Plans with equal keys can share one batch."""
        return (self.kind, self.steps, self.scale, self.eta, self.known is not None,
                self.x0_iters, self.autoguide)

    def make_operator(self, pipe: HandDiffusionPipeline, parts: list[dict]
                      ) -> GuidanceOperator | None:
        def cat(name: str) -> torch.Tensor | None:
            if parts[0][name] is None:
                return None
            return torch.cat([p[name] for p in parts]).to(pipe.device)

        family = self.kind.split("/")[0]
        if family == "inpaint":
            return VertexMaskOperator(cat("target"), cat("keep"))
        if family == "refit3d":
            return JointOperator(pipe.regressor, cat("target"), cat("mask"),
                                 align_translation=self.kind.endswith("/aligned"))
        if family == "fit2d":
            return ProjectionOperator(pipe.regressor, cat("keypoints"), cat("confidence"),
                                      cat("K"), solve_rotation=FIT2D_SOLVE_ROTATION)
        return None


def _load_net(path: Path, hand: HandModel) -> torch.nn.Module:
    """A trained denoiser from a `hhmr train` file, for inference only (no parameter
    gradients: guidance differentiates w.r.t. x_t alone)."""
    from hhmr.training.train import build_model

    if not path.exists():
        raise FileNotFoundError(f"model weights {path} are missing: train them with "
                                "`hhmr train` or reinstall HHMR")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt.get("num_vertices") != hand.num_vertices:
        raise ValueError(f"{path} was trained for {ckpt.get('num_vertices')} vertices, "
                         f"the hand has {hand.num_vertices}: retrain")
    net, _ = build_model(ckpt["config"], hand)
    net.load_state_dict(ckpt["model"])
    return net.requires_grad_(False)


def _cat_conditions(conds: list[Conditions]) -> Conditions:
    fields_ = conds[0].__dict__.keys()
    return Conditions(**{k: None if getattr(conds[0], k) is None else
                         torch.cat([getattr(c, k) for c in conds]) for k in fields_})


def _as_tensor(x, shape: tuple[int, ...], name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, torch.Tensor)
                        else x).float()
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


