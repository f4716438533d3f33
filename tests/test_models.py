"""GraphUNet, condition tokens, masking, the task API on a tiny untrained net, training."""

import math
from dataclasses import replace

import pytest
import torch
from hhmr.hand.rotations import random_rotations
from hhmr.mesh.hierarchy import MeshHierarchy
from hhmr.models import Conditions, GraphUNet, GraphUNetConfig
from hhmr.models.conditions import DropoutConfig, drop_conditions, normalize_keypoints
from hhmr.sampling import (
    DEFAULT_GUIDANCE,
    GUIDANCE_SPACE,
    GUIDED_FRACTION,
    X0_GUIDANCE,
    HandDiffusionPipeline,
)

TINY = GraphUNetConfig(channels=(8, 8, 16, 16), attention_levels=(2, 3), token_dim=16,
                       heads=2, cheb_k=2, time_dim=16, num_patches=4, image_dim=8)


@pytest.fixture(scope="module")
def tiny_net(hand):
    torch.manual_seed(0)
    return GraphUNet(MeshHierarchy.load(hand.hierarchy_path), TINY)


@pytest.fixture(scope="module")
def pipe(tiny_net, hand):
    return HandDiffusionPipeline(tiny_net, hand)


def _full_conditions(b, gen):
    return Conditions(
        joints3d=torch.randn(b, 21, 3, generator=gen), joints3d_mask=torch.ones(b, 21),
        keypoints2d=torch.randn(b, 21, 2, generator=gen), keypoints2d_conf=torch.ones(b, 21),
        image_tokens=torch.randn(b, 5, 8, generator=gen), image_mask=torch.ones(b, 5))


def test_forward_shapes_and_gradients(tiny_net, hand, gen):
    x = torch.randn(3, hand.num_vertices, 3, generator=gen, requires_grad=True)
    y = tiny_net(x, torch.tensor([0, 500, 999]), _full_conditions(3, gen))
    assert y.shape == x.shape
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert tiny_net(x, torch.tensor([10]), None).shape == x.shape  # unconditional
    with pytest.raises(ValueError):
        tiny_net(torch.zeros(1, 10, 3), torch.tensor([1]))


def test_context_and_traces_give_the_same_x0(tiny_net, hand, gen):
    """Keys/values computed once per run, and frozen traces, change nothing but speed."""
    from hhmr.models.tracing import TracedDenoiser

    x = torch.randn(3, hand.num_vertices, 3, generator=gen)
    t = torch.tensor([999, 400, 2])
    cond = _full_conditions(3, gen)
    with torch.no_grad():
        direct = tiny_net(x, t, cond)
        ctx = tiny_net.context(cond, 3)
        assert torch.allclose(tiny_net(x, t, ctx), direct, atol=1e-6)
        traced = TracedDenoiser(tiny_net)
        assert torch.allclose(traced(x, t, ctx), direct, atol=1e-5)
        assert torch.allclose(traced(x, t.flip(0), ctx), tiny_net(x, t.flip(0), ctx),
                              atol=1e-5)  # timesteps are inputs of the trace, not constants
        with pytest.raises(ValueError, match="batch"):
            tiny_net(x[:2], t[:2], ctx)


def test_warm_up_traces_the_batch_sizes_asked_for(tiny_net, hand):
    pipe = HandDiffusionPipeline(tiny_net, hand, trace=True)
    assert not pipe.traced._cache
    pipe.warm_up((1, 3))
    assert sorted(key[0] for key in pipe.traced._cache) == [1, 3]
    assert HandDiffusionPipeline(tiny_net, hand, trace=False).warm_up() >= 0  # nothing to do


@pytest.mark.parametrize("kdim", [16, 24])
def test_attention_matches_torch_multihead_attention(kdim, gen):
    """Same parameter names and results as nn.MultiheadAttention (the shipped weights were
    trained with it), vertex-first, with keys and values projected once."""
    from hhmr.models.graph_unet import Attention

    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(16, 2, kdim=kdim, vdim=kdim, batch_first=True)
    ours = Attention(16, 2, kdim=kdim)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 7, 16, generator=gen)
    tokens = torch.randn(3, 5, kdim, generator=gen)
    want = ref(x, tokens, tokens, need_weights=False)[0]
    got = ours(x.transpose(0, 1), ours.keys_values(tokens.transpose(0, 1))).transpose(0, 1)
    assert torch.allclose(got, want, atol=1e-6)
    if kdim == 16:
        want = ref(x, x, x, need_weights=False)[0]
        assert torch.allclose(ours(x.transpose(0, 1)).transpose(0, 1), want, atol=1e-6)


def test_tokens_share_one_space_and_nulls_replace_missing(tiny_net, gen):
    enc = tiny_net.conditions
    cond = _full_conditions(2, gen)
    tokens = enc(cond, 2)
    assert tokens.shape == (2, 21 + 21 + 5, 16) and enc.num_tokens == 47
    empty = enc(Conditions(), 2)
    masked = Conditions(**{**cond.__dict__, "joints3d_mask": torch.zeros(2, 21),
                           "keypoints2d_conf": torch.zeros(2, 21), "image_mask": torch.zeros(2, 5)})
    assert torch.allclose(enc(masked, 2), empty)  # fully masked == absent
    part = Conditions(**{**cond.__dict__, "joints3d_mask": torch.ones(2, 21)})
    part.joints3d_mask[:, 5] = 0
    t = enc(part, 2)
    assert torch.allclose(t[:, 5], empty[:, 5]) and not torch.allclose(t[:, 6], empty[:, 6])


def test_condition_dropout_levels(gen):
    cond = _full_conditions(2000, gen)
    none = drop_conditions(cond, DropoutConfig(0, 0, 0, 0, 0), gen)
    assert none.joints3d_mask.all() and none.keypoints2d_conf.all() and none.image_mask.all()
    everything = drop_conditions(cond, DropoutConfig(p_all=1.0), gen)
    assert not everything.joints3d_mask.any() and not everything.image_mask.any()
    fingers = drop_conditions(cond, DropoutConfig(0, 0, p_finger=0.5, p_joint=0, p_patch=0), gen)
    m = fingers.joints3d_mask[:, 1:].reshape(-1, 5, 4)
    assert ((m.sum(-1) == 0) | (m.sum(-1) == 4)).all()  # whole fingers go together
    assert 0.4 < (m[..., 0] == 0).float().mean() < 0.6
    modality = drop_conditions(cond, DropoutConfig(p_modality=0.3, p_all=0, p_finger=0,
                                                   p_joint=0, p_patch=0), gen)
    dropped = (modality.keypoints2d_conf.sum(1) == 0).float().mean()
    assert 0.25 < dropped < 0.35
    only3d = drop_conditions(cond, DropoutConfig(0, 0, 0, 0, 0, p_keypoints2d=1.0), gen)
    assert not only3d.keypoints2d_conf.any() and only3d.joints3d_mask.all()


def test_normalize_keypoints():
    kp = torch.tensor([[[10.0, 20.0], [30.0, 60.0]] + [[20.0, 40.0]] * 19])
    n = normalize_keypoints(kp, torch.ones(1, 21))
    assert torch.allclose(n.amin(1), torch.tensor([[-0.5, -1.0]]))
    assert torch.allclose(n.amax(1), torch.tensor([[0.5, 1.0]]))


def test_every_task_returns_hypotheses(pipe, hand):
    v = hand.num_vertices
    g = pipe.generate(n=3, steps=2, seed=1)
    assert g.vertices.shape == (3, v, 3) and g.joints.shape == (3, 21, 3)
    assert g.scores.shape == (3,) and "total_ms" in g.timings
    assert torch.equal(pipe.generate(n=3, steps=2, seed=1).vertices, g.vertices)  # seeded
    out = hand()
    keep = torch.ones(v, dtype=torch.bool)
    keep[:100] = False
    ip = pipe.inpaint(out.vertices[0] + 0.3, keep, n=2, steps=3)
    assert ip.vertices.shape == (2, v, 3)
    # replacement keeps the selected vertices exactly, in the caller's frame
    assert torch.allclose(ip.vertices[:, keep], out.vertices[0, keep] + 0.3, atol=1e-5)
    rf = pipe.refit3d(out.joints[0] + 1.0, n=2, steps=2)
    assert rf.vertices.shape == (2, v, 3)
    assert (rf.joints[:, 0] - (out.joints[0, 0] + 1.0)).norm(dim=-1).max() < 0.2
    K = torch.tensor([[500.0, 0, 112], [0, 500, 112], [0, 0, 1]])
    kp = (out.joints[0] + torch.tensor([0, 0, 0.5])) @ K.T
    kp = kp[:, :2] / kp[:, 2:]
    f2 = pipe.fit2d(kp, torch.ones(21), K, n=2, steps=2)
    assert f2.vertices.shape == (2, v, 3) and f2.extra["transl"].shape == (2, 3)
    # camera frame: the returned joints project with K where the score says they do
    proj = f2.joints @ K.T
    reproj = (proj[..., :2] / proj[..., 2:] - kp).norm(dim=-1).mean(-1)
    front = (proj[..., 2] > 0.01).all(-1)  # an untrained net may put joints behind the camera
    assert front.any()
    assert torch.allclose(reproj[front], -f2.scores[front], rtol=1e-3, atol=1e-3)
    assert (f2.extra["transl"][:, 2] >= 0.05).all()
    weak = pipe.fit2d(kp, None, None, n=2, steps=2)
    assert weak.extra["weak_scale"].shape == (2,)


def test_task_inputs_are_checked(pipe, hand):
    with pytest.raises(ValueError, match="joints21"):
        pipe.refit3d(torch.zeros(20, 3))
    with pytest.raises(ValueError, match="NaN"):
        pipe.refit3d(torch.full((21, 3), float("nan")))
    with pytest.raises(ValueError):
        pipe.refit3d(torch.zeros(21, 3), torch.zeros(21))
    with pytest.raises(ValueError):
        pipe.fit2d(torch.zeros(21, 2), torch.zeros(21))
    with pytest.raises(ValueError):
        pipe.inpaint(hand.v_template, torch.ones(5))


class IdentityDenoiser(torch.nn.Module):
    """f(x_t) = x_t: guidance then acts as plain gradient descent inside DDIM."""

    def forward(self, x_t, t, cond=None):
        return x_t


class TemplateDenoiser(torch.nn.Module):
    """f(x_t) = the template hand: only x0 guidance can move the prediction."""

    def __init__(self, hand) -> None:
        super().__init__()
        self.x0 = (hand.v_template - hand.keypoint_regressor[0] @ hand.v_template) / 0.1

    def forward(self, x_t, t, cond=None):
        return self.x0.expand_as(x_t)


@pytest.mark.parametrize("space", ["x_t", "x0"])
@pytest.mark.parametrize("task", ["refit3d", "fit2d", "inpaint"])
def test_guided_sampling_fits_the_evidence_better(hand, task, space):
    """x_t guidance with an identity net is gradient descent on x_t; x0 guidance with a net
    that always predicts the template must move that prediction towards the evidence."""
    net = IdentityDenoiser() if space == "x_t" else TemplateDenoiser(hand)
    pipe = HandDiffusionPipeline(net, hand)
    out = hand(hand_pose=torch.full((1, 15, 3), 0.1))
    K = torch.tensor([[500.0, 0, 112], [0, 500, 112], [0, 0, 1]])
    kp = (out.joints[0] + torch.tensor([0, 0, 0.5])) @ K.T
    kp = kp[:, :2] / kp[:, 2:]
    keep = torch.ones(hand.num_vertices, dtype=torch.bool)
    keep[:300] = False

    def run(scale):
        opts = {"n": 2, "steps": 10, "guidance_scale": scale, "seed": 3,
                "guidance_space": space}
        if task == "refit3d":
            return pipe.refit3d(out.joints[0], **opts)
        if task == "fit2d":
            return pipe.fit2d(kp, None, K, **opts)
        h = pipe.inpaint(out.vertices[0], keep, replace=False, **opts)
        err = (h.vertices[:, keep] - out.vertices[0, keep]).norm(dim=-1).mean(-1)
        return type(h)(h.vertices, h.joints, -err)

    # x_t: a small scale; x0: the task's default (scale, gradient steps)
    plain, guided = run(0.0), run(0.002 if space == "x_t" else None)
    assert (guided.scores > plain.scores).all()
    if task == "inpaint" and space == "x0":
        assert (-guided.scores < 1e-5).all()  # one default step is the exact projection


class CountingDenoiser(IdentityDenoiser):
    """An identity net that counts its calls, and those made with gradients (guided)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = self.guided = 0
        self.timesteps: list[int] = []

    def forward(self, x_t, t, cond=None):
        self.calls += 1
        self.guided += torch.is_grad_enabled() and x_t.requires_grad
        self.timesteps.append(int(t.reshape(-1)[0]))
        return x_t


def test_inpainting_with_replacement_guides_only_its_early_steps(hand):
    net = CountingDenoiser()
    pipe = HandDiffusionPipeline(net, hand)
    keep = torch.ones(hand.num_vertices, dtype=torch.bool)
    keep[:300] = False
    h = pipe.inpaint(hand.v_template, keep, n=2, steps=10, guidance_scale=0.002)
    assert torch.allclose(h.vertices[:, keep], hand.v_template[keep], atol=1e-5)
    assert GUIDANCE_SPACE["inpaint+replace"] == "x_t"
    assert net.calls == 10
    assert net.guided == math.ceil(GUIDED_FRACTION["inpaint+replace"] * 10) < 10
    net.calls = net.guided = 0
    pipe.inpaint(hand.v_template, keep, n=2, steps=10, guidance_scale=0.002, replace=False,
                 guidance_space="x_t")  # guidance alone: every step, two moves at the last
    assert net.guided == 11


def test_only_x_t_guided_runs_end_at_t0(hand, monkeypatch):
    """x_t guidance's last move must land on the output (linspace, ending at t=0); unguided
    and x0-guided runs return the net's x0 at t=T/n (trailing), or at a task's
    FINAL_TIMESTEP when that is lower."""
    from hhmr import pipeline

    net = CountingDenoiser()
    pipe = HandDiffusionPipeline(net, hand)
    joints = hand.keypoint_regressor @ hand.v_template
    for space, last in (("x_t", 0), ("x0", 99)):
        net.timesteps = []
        pipe.refit3d(joints, n=1, steps=10, guidance_space=space)
        assert net.timesteps[0] == 999 and net.timesteps[-1] == last, space
    net.timesteps = []
    pipe.generate(1, steps=10)
    assert net.timesteps[-1] == 99
    monkeypatch.setitem(pipeline.FINAL_TIMESTEP, "generate", 10)
    for steps, last in ((10, 10), (200, 4), (1, 999)):
        net.timesteps = []
        pipe.generate(1, steps=steps)
        assert len(net.timesteps) == steps and net.timesteps[-1] == last, steps


def test_multistep_solver_only_where_nothing_changes_the_sample_between_steps(
        hand, monkeypatch):
    """DPM-Solver++ runs unguided and x0-guided sampling; x_t guidance, inpainting's
    replacement and eta > 0 change the sample between steps and take DDIM."""
    from hhmr import pipeline
    from hhmr.diffusion import DDIMSampler, DPMSolverSampler

    used: list[str] = []

    class SpyDPM(DPMSolverSampler):
        def step(self, *args, **kwargs):
            used.append("dpm")
            return super().step(*args, **kwargs)

    class SpyDDIM(DDIMSampler):
        def step(self, *args, **kwargs):
            used.append("ddim")
            return super().step(*args, **kwargs)

    monkeypatch.setattr(pipeline, "DPMSolverSampler", SpyDPM)
    monkeypatch.setattr(pipeline, "DDIMSampler", SpyDDIM)
    pipe = HandDiffusionPipeline(CountingDenoiser(), hand)
    joints = hand.keypoint_regressor @ hand.v_template
    keep = torch.ones(hand.num_vertices, dtype=torch.bool)
    keep[:300] = False
    runs = {
        "generate": (lambda: pipe.generate(1, steps=4), "dpm"),
        "generate eta 1": (lambda: pipe.generate(1, steps=4, eta=1.0), "ddim"),
        "refit3d x0": (lambda: pipe.refit3d(joints, n=1, steps=4, guidance_space="x0"), "dpm"),
        "refit3d x_t": (lambda: pipe.refit3d(joints, n=1, steps=4, guidance_space="x_t"),
                        "ddim"),
        "inpaint replace": (lambda: pipe.inpaint(hand.v_template, keep, n=1, steps=4), "ddim"),
        "inpaint x0 alone": (lambda: pipe.inpaint(hand.v_template, keep, n=1, steps=4,
                                                  replace=False, guidance_space="x0"), "dpm"),
    }
    for name, (run, solver) in runs.items():
        used.clear()
        run()
        assert set(used) == {solver} and len(used) == 4, name
    monkeypatch.setattr(pipeline, "SOLVER", "ddim")
    used.clear()
    pipe.generate(1, steps=4)
    assert set(used) == {"ddim"}


def test_central_first_hypothesis_starts_from_the_noise_mean(pipe, hand):
    """refit3d and fit2d start hypothesis 0 from x_T = 0 (the same for every seed and n);
    the others, and every hypothesis of generate, from the seed's noise."""
    joints = hand.keypoint_regressor @ hand.v_template
    a = pipe.refit3d(joints, n=3, steps=3, seed=1)
    b = pipe.refit3d(joints, n=1, steps=3, seed=2)
    assert torch.allclose(a.vertices[0], b.vertices[0], atol=1e-5)
    rand = pipe.refit3d(joints, n=3, steps=3, seed=1, central_first=False)
    assert torch.equal(rand.vertices[1:], a.vertices[1:])  # the same noise after row 0
    assert a.extra["central"].tolist() == [True, False, False] and "central" not in rand.extra
    a.scores = torch.tensor([-3.0, -1.0, -2.0])
    assert a.order() == [0, 1, 2] and rand.order() == rand.scores.argsort(
        descending=True).tolist()
    assert not torch.allclose(rand.vertices[0], a.vertices[0], atol=1e-3)
    assert not torch.allclose(pipe.refit3d(joints, n=1, steps=3, seed=2,
                                           central_first=False).vertices[0],
                              rand.vertices[0], atol=1e-3)
    g1, g2 = pipe.generate(n=1, steps=2, seed=1), pipe.generate(n=1, steps=2, seed=2)
    assert not torch.allclose(g1.vertices, g2.vertices, atol=1e-3)
    assert torch.allclose(pipe.generate(n=1, steps=2, seed=1, central_first=True).vertices,
                          pipe.generate(n=1, steps=2, seed=2, central_first=True).vertices,
                          atol=1e-5)


def test_x0_guidance_stays_finite_at_any_strength(hand):
    """Far beyond the tuned scale, x0 guidance still lands on the skeleton (steps that
    would diverge are taken back and halved)."""
    pipe = HandDiffusionPipeline(TemplateDenoiser(hand), hand)
    target = hand(hand_pose=torch.full((1, 15, 3), 0.15)).joints[0]
    tuned = X0_GUIDANCE["refit3d"][0]
    for strength in (1.0, 50.0):
        h = pipe.refit3d(target, n=2, guidance_scale=tuned * strength, guidance_space="x0")
        assert torch.isfinite(h.vertices).all()
        assert (-h.scores < 1.0).all(), strength  # mean joint error under a millimetre


def test_guidance_space_defaults_and_checks():
    guidance = HandDiffusionPipeline.guidance
    assert guidance("refit3d", space="x_t") == (DEFAULT_GUIDANCE["refit3d"], 0)
    scale, iters = guidance("refit3d", 0.003, "x0")
    assert scale == 0.003 and iters == X0_GUIDANCE["refit3d"][1] > 0
    for task, space in GUIDANCE_SPACE.items():
        assert (guidance(task)[1] > 0) == (space == "x0")
    with pytest.raises(ValueError, match="guidance space"):
        guidance("fit2d", space="eps")
    # a strength is relative to the tuned scale of the space it acts in
    assert guidance("refit3d", strength=2.0) == (2 * X0_GUIDANCE["refit3d"][0],
                                                 X0_GUIDANCE["refit3d"][1])
    assert guidance("inpaint+replace", space="x_t", strength=0.5)[0] == \
        0.5 * DEFAULT_GUIDANCE["inpaint"]
    with pytest.raises(ValueError, match="not both"):
        guidance("fit2d", 0.1, strength=1.0)


@pytest.mark.parametrize("weighting,frame,rank", [
    ("uniform", "camera", 0), ("edm", "camera", 0), ("edm", "template", 0),
    ("edm", "template_or_camera", 0), ("edm", "template_or_camera", 8)])
def test_tiny_training_run_lowers_the_loss(tmp_path, weighting, frame, rank):
    from hhmr.paths import weights_dir  # noqa: F401
    from hhmr.training.train import load_config, train

    cfg = load_config("backend/hhmr/configs/prior.toml")
    cfg["model"].update(channels=[8, 8, 16, 16], token_dim=16, heads=2, time_dim=16,
                        frame=frame, linear_rank=rank)
    cfg["train"].update(batch_size=16, max_steps=80, checkpoint_every=20, lr=3e-3,
                        warmup_steps=5, t_weighting=weighting, linear_fit_hands=200)
    # a net this small hardly moves its normal term in 80 steps; at the shipped config's
    # weight (0.5) that term would hide the drop of the others
    cfg["loss"]["normal"] = 0.1
    result = train(cfg, tmp_path, progress=False)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    hist = ckpt["history"]  # mean losses over each 20-step interval
    assert result["steps"] == 80 and [h["step"] for h in hist][-1] == 80
    assert hist[-1]["total"] < 0.9 * hist[0]["total"]
    # resume continues from the checkpoint
    more = train(cfg, tmp_path, resume=tmp_path / "checkpoint.pt", max_steps=85,
                 progress=False)
    assert more["steps"] == 85
    # final.pt ships the moving average of the weights, which lags the live weights
    final = torch.load(tmp_path / "final.pt", weights_only=False)
    live = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert final["ema_decay"] == cfg["train"]["ema_decay"]
    name = "net.out.weight"
    assert torch.equal(final["model"][name], live["ema"][name])
    assert not torch.equal(final["model"][name], live["model"][name])
    if rank:  # the linear estimate was fitted once, saved, and kept on resume
        fitted = ckpt["model"]["linear.eigvals"]
        assert fitted.shape == (rank,) and (fitted > 0).all()
        assert torch.equal(live["model"]["linear.eigvals"], fitted)
        assert torch.equal(final["model"]["linear.basis"], live["model"]["linear.basis"])


def test_training_timesteps_can_focus_on_the_sampler_grid():
    from hhmr.diffusion import CosineSchedule
    from hhmr.training.train import training_timesteps

    sched = CosineSchedule()
    plain = training_timesteps(sched, 500, torch.Generator().manual_seed(3))
    assert torch.equal(plain, sched.sample_timesteps(500, torch.Generator().manual_seed(3)))
    grid = set(range(99, 1000, 100))
    focused = training_timesteps(sched, 500, torch.Generator().manual_seed(3), focus=1.0)
    assert set(focused.tolist()) == grid
    half = training_timesteps(sched, 2000, torch.Generator().manual_seed(3), focus=0.5)
    share = sum(t in grid for t in half.tolist()) / 2000
    assert 0.45 < share < 0.56  # half from the grid, plus uniform draws that land on it


def test_timestep_weights_rebalance_the_noise_levels():
    from hhmr.diffusion import CosineSchedule
    from hhmr.models.denoiser import X0Denoiser
    from hhmr.training.losses import timestep_weights

    c_out = X0Denoiser(torch.nn.Identity(), CosineSchedule(), 0.65).coefficients(
        torch.arange(1000))[1]
    assert torch.equal(timestep_weights(c_out), torch.ones(1000))
    w = timestep_weights(c_out, "edm", max_weight=10.0)
    assert w.mean() == pytest.approx(1.0)
    assert (w[1:] <= w[:-1] + 1e-6).all()  # the less noise, the more weight ...
    assert w.max() / w.min() == pytest.approx(10.0, rel=1e-4)  # ... up to the cap
    # uncapped, the weight is 1/c_out: c_out * weight is the same at every timestep
    free = timestep_weights(c_out, "edm", max_weight=1e9) * c_out
    assert torch.allclose(free, free[0].expand(1000), rtol=1e-4)
    with pytest.raises(ValueError, match="timestep weighting"):
        timestep_weights(c_out, "snr")


def test_mesh_losses_weight_each_sample(hand, gen):
    from hhmr.training.losses import MeshLosses

    losses = MeshLosses(hand.keypoint_regressor, hand.faces,
                        {"vertex": 1.0, "joint": 1.0, "normal": 0.5, "edge": 1.0})
    target = hand.v_template.expand(3, -1, -1) * 10
    pred = target + 0.01 * torch.randn(target.shape, generator=gen)
    pred[2] += 0.2 * torch.randn(target.shape[1:], generator=gen)  # one bad sample
    plain = losses(pred, target)
    ones = losses(pred, target, torch.ones(3))
    assert all(torch.allclose(plain[k], ones[k]) for k in plain)
    without_bad = losses(pred, target, torch.tensor([1.5, 1.5, 0.0]))
    good_only = losses(pred[:2], target[:2])
    assert all(torch.allclose(without_bad[k], good_only[k]) for k in plain)
    assert without_bad["total"] < 0.5 * plain["total"]
    # the squared x0 error is off unless weighted, and then adds its weighted mean
    assert torch.allclose(plain["vertex_mse"], (pred - target).square().mean())
    with_mse = MeshLosses(hand.keypoint_regressor, hand.faces,
                          {**losses.weights, "vertex_mse": 10.0})(pred, target)
    assert torch.allclose(with_mse["total"], plain["total"] + 10.0 * plain["vertex_mse"])


def test_squared_x0_error_is_minimised_by_the_mean_and_l1_by_the_median(hand):
    """Why `loss.vertex_mse` exists: DDIM assumes the net predicts E[x0 | x_t]. Over a skewed
    set of targets the best constant prediction under L1 is their median, under the squared
    error their mean."""
    from hhmr.training.losses import MeshLosses

    losses = MeshLosses(hand.keypoint_regressor, hand.faces, {})
    base = hand.v_template[None] * 10
    offsets = torch.tensor([0.0, 0.0, 0.0, 0.1, 1.0])  # skewed: median 0, mean 0.22
    target = base + offsets[:, None, None]

    def loss_at(c: float, term: str) -> float:
        return float(losses(base.expand(5, -1, -1) + c, target)[term])

    median, mean = 0.0, 0.22
    assert loss_at(median, "vertex") < min(loss_at(median - 0.02, "vertex"),
                                           loss_at(median + 0.02, "vertex"),
                                           loss_at(mean, "vertex"))
    assert loss_at(mean, "vertex_mse") < min(loss_at(mean - 0.02, "vertex_mse"),
                                             loss_at(mean + 0.02, "vertex_mse"),
                                             loss_at(median, "vertex_mse"))


def test_config_overrides():
    from hhmr.training.train import apply_overrides

    cfg = {"train": {"lr": 1e-3}, "model": {"channels": [8]}}
    out = apply_overrides(cfg, ["train.t_focus=0.5", "train.lr = 2e-4", 'model.name="x"'])
    assert out["train"] == {"lr": 2e-4, "t_focus": 0.5} and out["model"]["name"] == "x"
    assert cfg["train"] == {"lr": 1e-3}  # the original is untouched
    for bad in ("train.lr", "lr=1", "nosection.x=1", "train.lr=abc"):
        with pytest.raises(ValueError, match="--set"):
            apply_overrides(cfg, [bad])


def test_learning_rate_anneals_with_the_time_limit():
    from hhmr.training.train import lr_at

    cfg = {"lr": 1e-3, "warmup_steps": 10, "max_steps": 100_000, "max_minutes": 60}
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(50, cfg, minutes=0) == pytest.approx(1e-3, rel=1e-3)
    assert lr_at(50, cfg, minutes=30) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5))
    assert lr_at(50, cfg, minutes=60) == pytest.approx(5e-5)  # the time limit ends the run
    assert lr_at(100_000, dict(cfg, max_minutes=None)) == pytest.approx(5e-5)


def test_generation_sets_are_described_against_real_hands(pipe):
    from hhmr.evaluation.tasks import describe_set, reference_hands

    real = reference_hands(pipe, seed=3, num=40)
    same = describe_set(pipe, real[:20], real)
    assert same["fidelity_mm"] == pytest.approx(0.0, abs=1e-3)  # every hand is a real one
    assert same["coverage_mm"] > 0.5  # but half the real hands are missing
    one = describe_set(pipe, real[:1].repeat(20, 1, 1), real)
    assert one["apd_mm"] == pytest.approx(0.0, abs=1e-3)
    assert one["coverage_mm"] > same["coverage_mm"]


def test_template_frame_is_a_rotation_that_turns_with_the_hand(hand, gen):
    from hhmr.models.denoiser import template_frame

    tmpl = hand.v_template - hand.v_template.mean(0)
    r = random_rotations(6, gen)
    x = tmpl @ r.transpose(1, 2) + 0.002 * torch.randn(6, *tmpl.shape, generator=gen)
    q = template_frame(x, tmpl)
    assert torch.allclose(q @ q.transpose(1, 2), torch.eye(3).expand(6, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(q), torch.ones(6), atol=1e-5)
    assert (q - r).abs().max() < 0.01  # recovers the turn
    noise = torch.randn(6, *tmpl.shape, generator=gen)  # and any x, turned, turns its frame
    turned = template_frame(noise @ r.transpose(1, 2), tmpl)
    assert torch.allclose(turned, r @ template_frame(noise, tmpl), atol=1e-4)


def test_template_frame_denoiser_is_equivariant_to_turns(hand, gen):
    from hhmr.training.train import build_model

    cfg = {"model": {**TINY.to_dict(), "sigma_data": 0.65, "frame": "template"}}
    torch.manual_seed(0)
    den, _ = build_model(cfg, hand)
    cam, _ = build_model({"model": {**cfg["model"], "frame": "camera"}}, hand)
    assert den.net.conditions.frame_inputs and not cam.net.conditions.frame_inputs
    b = 4
    x = torch.randn(b, hand.num_vertices, 3, generator=gen)
    t = torch.tensor([999, 600, 200, 10])
    r = random_rotations(b, gen)
    j = torch.randn(b, 21, 3, generator=gen)
    for cond in (None, Conditions(joints3d=j, joints3d_mask=torch.ones(b, 21))):
        turned = None if cond is None else \
            Conditions(joints3d=j @ r.transpose(1, 2), joints3d_mask=torch.ones(b, 21))
        with torch.no_grad():
            out = den(x, t, cond)
            out_turned = den(x @ r.transpose(1, 2), t, turned)
            ctx_out = den(x, t, den.context(cond, b))
        assert torch.allclose(out_turned, out @ r.transpose(1, 2), atol=1e-4)
        assert torch.equal(ctx_out, out)
    with torch.no_grad():  # the camera-frame net is not equivariant
        plain = cam(x, t)
        assert not torch.allclose(cam(x @ r.transpose(1, 2), t), plain @ r.transpose(1, 2),
                                  atol=1e-3)
    # 2D keypoints stay in the camera: the net sees the frame with them
    kp = Conditions(keypoints2d=torch.randn(b, 21, 2, generator=gen),
                    keypoints2d_conf=torch.ones(b, 21))
    with torch.no_grad():
        tokens = den.net.conditions(replace(kp, frame=r), b)
        other = den.net.conditions(replace(kp, frame=r.flip(0)), b)
    assert not torch.allclose(tokens[:, 21:42], other[:, 21:42])
    with pytest.raises(TypeError, match="FrameContext"):
        den(x, t, cam.context(None, b))


def test_template_frame_pipeline_runs_every_task(hand):
    from hhmr.training.train import build_model

    torch.manual_seed(0)
    den, _ = build_model({"model": {**TINY.to_dict(), "sigma_data": 0.65,
                                    "frame": "template"}}, hand)
    p = HandDiffusionPipeline(den.requires_grad_(False), hand, trace=True)
    eager = HandDiffusionPipeline(den, hand, trace=False)
    gen_h = p.generate(3, seed=1)
    assert gen_h.vertices.shape == (3, hand.num_vertices, 3)
    assert torch.isfinite(gen_h.vertices).all()
    assert p.traced._cache  # the net inside the frame ran through a trace
    assert torch.allclose(gen_h.vertices, eager.generate(3, seed=1).vertices, atol=1e-5)
    joints = hand(None, torch.zeros(1, 15, 3), None).joints[0]
    fit = p.refit3d(joints, n=2)
    assert torch.isfinite(fit.vertices).all() and fit.vertices.shape[0] == 2


def test_template_or_camera_frame_keeps_2d_conditioned_samples_in_the_camera(hand, gen):
    from hhmr.models.denoiser import has_camera_condition
    from hhmr.training.train import build_model

    torch.manual_seed(0)
    den, _ = build_model({"model": {**TINY.to_dict(), "sigma_data": 0.65,
                                    "frame": "template_or_camera"}}, hand)
    assert not den.net.conditions.frame_inputs
    b = 4
    x = torch.randn(b, hand.num_vertices, 3, generator=gen)
    t = torch.tensor([999, 600, 200, 10])
    r = random_rotations(b, gen)
    conf = torch.ones(b, 21)
    conf[2:] = 0  # samples 2 and 3: every keypoint dropped, as training's masking does
    kp = Conditions(keypoints2d=torch.randn(b, 21, 2, generator=gen), keypoints2d_conf=conf)
    assert has_camera_condition(kp, b).tolist() == [True, True, False, False]
    assert has_camera_condition(Conditions(), b).tolist() == [False] * b
    c_skip, c_out, c_in = (c[:, None, None] for c in den.coefficients(t))
    with torch.no_grad():
        out = den(x, t, kp)
        camera = c_skip * x + c_out * den.net(c_in * x, t, kp)  # no turn at all
        turned = den(x @ r.transpose(1, 2), t, kp)
    assert torch.allclose(out[:2], camera[:2], atol=1e-5)
    assert not torch.allclose(out[2:], camera[2:], atol=1e-3)
    # the samples without a camera condition turn with the hand
    assert torch.allclose(turned[2:], out[2:] @ r[2:].transpose(1, 2), atol=1e-4)


class _PassLinearInput(torch.nn.Module):
    """F = the linear input channel: the denoiser then returns the linear estimate itself."""

    def __init__(self, net) -> None:
        super().__init__()
        self.net = net

    def context(self, cond, batch):
        return self.net.context(cond, batch)

    def forward(self, x, t, cond=None):
        assert x.shape[-1] == 6
        return x[..., 3:]


@pytest.mark.parametrize("frame", ["camera", "template", "template_or_camera"])
def test_linear_input_is_the_gaussian_estimate_in_the_hands_own_frame(hand, gen, frame):
    from hhmr.data.poses import PosePrior
    from hhmr.models.denoiser import template_frame
    from hhmr.training.data import training_hands
    from hhmr.training.train import build_model

    torch.manual_seed(0)
    den, _ = build_model({"model": {**TINY.to_dict(), "sigma_data": 0.65, "frame": frame,
                                    "linear_rank": 16}}, hand)
    assert den.net.inp.in_features == 6
    hands = training_hands(hand, PosePrior(hand), num=300, chunk=150)
    den.fit_linear(hands)
    aligned = hands @ template_frame(hands, den.template)
    assert torch.allclose(den.linear.mean.reshape(-1, 3), aligned.mean(0), atol=1e-5)
    b = 4
    x0 = training_hands(hand, PosePrior(hand), seed=3, num=b)
    t = torch.tensor([966, 700, 300, 20])
    ab = den.alpha_bar[t + 1][:, None, None]
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * torch.randn(x0.shape, generator=gen)
    q = template_frame(x_t, den.template)
    expected = den.linear(x_t @ q, ab.reshape(-1)) @ q.transpose(1, 2)
    with torch.no_grad():
        trained = den(x_t, t)
    den.net = _PassLinearInput(den.net)
    with torch.no_grad():
        out = den(x_t, t)
        r = random_rotations(b, gen)
        turned = den(x_t @ r.transpose(1, 2), t)
    assert torch.allclose(out, expected, atol=1e-4)
    assert torch.allclose(turned, out @ r.transpose(1, 2), atol=1e-4)  # in any frame
    assert not torch.allclose(trained, out, atol=1e-2)  # an untrained net adds its own F
    # at t=700 it is a whole hand, not x_t shrunk: far nearer the truth than the skip alone
    c_skip = den.coefficients(t)[0][:, None, None]
    err = (out - x0).norm(dim=-1).mean(1)
    assert err[1] < 0.3 * (c_skip * x_t - x0).norm(dim=-1).mean(1)[1]


def test_linear_input_pipeline_traces_as_it_runs_eagerly(hand):
    from hhmr.data.poses import PosePrior
    from hhmr.training.data import training_hands
    from hhmr.training.train import build_model

    torch.manual_seed(0)
    den, _ = build_model({"model": {**TINY.to_dict(), "sigma_data": 0.65,
                                    "frame": "template_or_camera", "linear_rank": 16}}, hand)
    den.fit_linear(training_hands(hand, PosePrior(hand), num=200))
    p = HandDiffusionPipeline(den.requires_grad_(False), hand, trace=True)
    eager = HandDiffusionPipeline(den, hand, trace=False)
    gen_h = p.generate(3, seed=1)
    assert torch.isfinite(gen_h.vertices).all() and p.traced._cache
    assert torch.allclose(gen_h.vertices, eager.generate(3, seed=1).vertices, atol=1e-5)
    joints = hand(None, torch.zeros(1, 15, 3), None).joints[0]
    for fit in (p.refit3d(joints, n=2), p.fit2d(torch.rand(21, 2) * 100, n=2)):
        assert torch.isfinite(fit.vertices).all() and fit.vertices.shape[0] == 2


class ScaledTemplate(TemplateDenoiser):
    """Predicts the template times `factor` at every step, and records its timesteps."""

    def __init__(self, hand, factor: float) -> None:
        super().__init__(hand)
        self.factor, self.timesteps = factor, []

    def forward(self, x_t, t, cond=None):
        self.timesteps.append(int(t.reshape(-1)[0]))
        return self.factor * super().forward(x_t, t, cond)


def test_generation_is_autoguided_by_the_guide_net(hand, monkeypatch):
    """With a guide, generation's x0 is D_guide + w (D - D_guide) on the default's
    timesteps only; weight 1 (or no guide) is the net alone; other tasks never call the
    guide; a weight without a guide is an error."""
    from hhmr import pipeline
    from hhmr.diffusion import AutoGuidance

    monkeypatch.setitem(pipeline.AUTOGUIDANCE, "generate", AutoGuidance(2.0))
    net, guide = ScaledTemplate(hand, 1.0), ScaledTemplate(hand, 0.8)
    pipe = HandDiffusionPipeline(net, hand, guide=guide)
    template = net.x0 * 0.1  # metres
    # constant predictions: DPM-Solver++ returns the last x0, 0.8 + 2 (1 - 0.8) = 1.2
    assert torch.allclose(pipe.generate(2, steps=10).vertices, 1.2 * template, atol=1e-5)
    assert guide.timesteps == net.timesteps and len(net.timesteps) == 10
    assert torch.allclose(pipe.generate(2, steps=10, autoguidance=1.5).vertices,
                          1.1 * template, atol=1e-5)
    monkeypatch.setitem(pipeline.AUTOGUIDANCE, "generate", AutoGuidance(2.0, t_min=500))
    net.timesteps, guide.timesteps = [], []
    pipe.generate(2, steps=10)
    assert guide.timesteps == [t for t in net.timesteps if t >= 500] != net.timesteps
    for plain in (pipe.generate(2, steps=10, autoguidance=1.0),
                  HandDiffusionPipeline(net, hand).generate(2, steps=10)):
        assert torch.allclose(plain.vertices, template, atol=1e-5)
    guide.timesteps = []
    pipe.refit3d(hand.keypoint_regressor @ hand.v_template, n=1, steps=10)
    assert guide.timesteps == []
    with pytest.raises(ValueError, match="guide"):
        HandDiffusionPipeline(net, hand).generate(1, steps=2, autoguidance=2.0)


def test_a_guide_identical_to_the_net_changes_nothing(tiny_net, hand):
    """Through the frozen traces too: D_guide = D gives D at any weight."""
    plain = HandDiffusionPipeline(tiny_net, hand).generate(3, steps=4, seed=5).vertices
    same = HandDiffusionPipeline(tiny_net, hand, guide=tiny_net).generate(
        3, steps=4, seed=5, autoguidance=2.0).vertices
    assert torch.allclose(plain, same, atol=1e-5)


def test_the_shipped_weights_come_with_their_guide(tmp_path):
    """from_pretrained() loads weights/hhmr_guide.pt with the shipped weights only: a copy
    of them elsewhere, or guide=False, gets none; evaluation reports both samplers."""
    import shutil

    from hhmr.evaluation.tasks import eval_generate
    from hhmr.paths import weights_dir

    shipped = HandDiffusionPipeline.from_pretrained()
    assert shipped.guide is not None and shipped.autoguidance("generate") is not None
    assert HandDiffusionPipeline.from_pretrained(guide=False).guide is None
    copy = tmp_path / "copy.pt"
    shutil.copy(weights_dir() / "hhmr_prior.pt", copy)
    assert HandDiffusionPipeline.from_pretrained(copy).guide is None
    rows = eval_generate(shipped, 4, 0, 2, progress=False)
    assert set(rows) == {"diffusion", "diffusion_no_autoguidance", "pose_prior", "pca"}
    assert rows["diffusion"]["apd_mm"] != rows["diffusion_no_autoguidance"]["apd_mm"]
