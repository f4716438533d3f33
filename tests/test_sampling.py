"""The sampling API on tiny or scripted nets: tasks, guidance, solver choice, the first
hypothesis, autoguidance, settings saved with the weights."""

import math
from dataclasses import replace

import pytest
import torch
from hhmr.diffusion import AutoGuidance
from hhmr.sampling import HandDiffusionPipeline, SamplingConfig


@pytest.fixture(scope="module")
def pipe(tiny_net, hand):
    return HandDiffusionPipeline(tiny_net, hand)


def test_warm_up_traces_the_batch_sizes_asked_for(tiny_net, hand):
    pipe = HandDiffusionPipeline(tiny_net, hand, trace=True)
    assert not pipe.denoiser.traced._cache
    pipe.warm_up((1, 3))
    assert sorted(key[0] for key in pipe.denoiser.traced._cache) == [1, 3]
    assert HandDiffusionPipeline(tiny_net, hand, trace=False).warm_up() >= 0  # nothing to do


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
    assert pipe.config.inpaint.space == "x_t"
    assert net.calls == 10
    assert net.guided == math.ceil(pipe.config.inpaint.guided_fraction * 10) < 10
    net.calls = net.guided = 0
    pipe.inpaint(hand.v_template, keep, n=2, steps=10, guidance_scale=0.002, replace=False,
                 guidance_space="x_t")  # guidance alone: every step, two moves at the last
    assert net.guided == 11


def test_only_x_t_guided_runs_end_at_t0(hand):
    """x_t guidance's last move must land on the output (linspace, ending at t=0); unguided
    and x0-guided runs return the net's x0 at t=T/n ("front" spacing)."""
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
    for steps, last in ((200, 4), (1, 999)):
        net.timesteps = []
        pipe.generate(1, steps=steps)
        assert len(net.timesteps) == steps and net.timesteps[-1] == last, steps


def test_multistep_solver_only_where_nothing_changes_the_sample_between_steps(
        hand, monkeypatch):
    """DPM-Solver++ runs unguided and x0-guided sampling; x_t guidance, inpainting's
    replacement and eta > 0 change the sample between steps and take DDIM."""
    from hhmr.diffusion import DDIMSampler, DPMSolverSampler
    from hhmr.sampling import loop

    used: list[str] = []

    class SpyDPM(DPMSolverSampler):
        def step(self, *args, **kwargs):
            used.append("dpm")
            return super().step(*args, **kwargs)

    class SpyDDIM(DDIMSampler):
        def step(self, *args, **kwargs):
            used.append("ddim")
            return super().step(*args, **kwargs)

    monkeypatch.setattr(loop, "DPMSolverSampler", SpyDPM)
    monkeypatch.setattr(loop, "DDIMSampler", SpyDDIM)
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
    ddim = pipe.with_config(replace(pipe.config, sampler=replace(pipe.config.sampler,
                                                                 solver="ddim")))
    used.clear()
    ddim.generate(1, steps=4)
    assert set(used) == {"ddim"}
    used.clear()
    pipe.generate(1, steps=4)  # the original keeps its own settings
    assert set(used) == {"dpm"}


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
    tuned = pipe.config.refit3d.x0_scale
    for strength in (1.0, 50.0):
        h = pipe.refit3d(target, n=2, guidance_scale=tuned * strength, guidance_space="x0")
        assert torch.isfinite(h.vertices).all()
        assert (-h.scores < 1.0).all(), strength  # mean joint error under a millimetre


def test_guidance_space_defaults_and_checks():
    cfg = SamplingConfig()
    refit = cfg.refit3d
    assert refit.guidance(space="x_t") == ("x_t", refit.x_t_scale, 0)
    assert refit.guidance(0.003, space="x0") == ("x0", 0.003, refit.x0_iterations)
    assert refit.x0_iterations > 1
    for name in ("inpaint", "inpaint_without_replacement", "refit3d", "fit2d"):
        task = cfg.task(name)
        assert (task.guidance()[2] > 0) == (task.space == "x0")
    with pytest.raises(ValueError, match="guidance space"):
        cfg.fit2d.guidance(space="eps")
    # a strength is relative to the tuned scale of the space it acts in
    assert refit.guidance(strength=2.0) == ("x0", 2 * refit.x0_scale, refit.x0_iterations)
    assert cfg.inpaint.guidance(space="x_t", strength=0.5)[1] == 0.5 * cfg.inpaint.x_t_scale
    with pytest.raises(ValueError, match="not both"):
        cfg.fit2d.guidance(0.1, strength=1.0)
    with pytest.raises(ValueError, match="solver"):
        replace(cfg.sampler, solver="euler")
    with pytest.raises(ValueError, match="unknown task"):
        cfg.task("dance")


class ScaledTemplate(TemplateDenoiser):
    """Predicts the template times `factor` at every step, and records its timesteps."""

    def __init__(self, hand, factor: float) -> None:
        super().__init__(hand)
        self.factor, self.timesteps = factor, []

    def forward(self, x_t, t, cond=None):
        self.timesteps.append(int(t.reshape(-1)[0]))
        return self.factor * super().forward(x_t, t, cond)


def test_generation_is_autoguided_by_the_guide_net(hand):
    """With a guide, generation's x0 is D_guide + w (D - D_guide) on the default's
    timesteps only; weight 1 (or no guide) is the net alone; other tasks never call the
    guide; a weight without a guide is an error."""
    net, guide = ScaledTemplate(hand, 1.0), ScaledTemplate(hand, 0.8)
    config = SamplingConfig().with_task("generate", autoguidance=AutoGuidance(2.0))
    pipe = HandDiffusionPipeline(net, hand, guide=guide, config=config)
    template = net.x0 * 0.1  # metres
    # constant predictions: DPM-Solver++ returns the last x0, 0.8 + 2 (1 - 0.8) = 1.2
    assert torch.allclose(pipe.generate(2, steps=10).vertices, 1.2 * template, atol=1e-5)
    assert guide.timesteps == net.timesteps and len(net.timesteps) == 10
    assert torch.allclose(pipe.generate(2, steps=10, autoguidance=1.5).vertices,
                          1.1 * template, atol=1e-5)
    net.timesteps, guide.timesteps = [], []
    pipe.with_config(config.with_task("generate", autoguidance=AutoGuidance(2.0, t_min=500))
                     ).generate(2, steps=10)
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
    assert shipped.guide is not None and shipped.autoguidance() is not None
    assert HandDiffusionPipeline.from_pretrained(guide=False).guide is None
    copy = tmp_path / "copy.pt"
    shutil.copy(weights_dir() / "hhmr_prior.pt", copy)
    assert HandDiffusionPipeline.from_pretrained(copy).guide is None
    rows = eval_generate(shipped, 4, 0, 2, progress=False)
    assert set(rows) == {"diffusion", "diffusion_no_autoguidance", "pose_prior", "pca"}
    assert rows["diffusion"]["apd_mm"] != rows["diffusion_no_autoguidance"]["apd_mm"]
def test_generation_sets_are_described_against_real_hands(pipe):
    from hhmr.evaluation.tasks import describe_set, reference_hands

    real = reference_hands(pipe, seed=3, num=40)
    same = describe_set(pipe, real[:20], real)
    assert same["fidelity_mm"] == pytest.approx(0.0, abs=1e-3)  # every hand is a real one
    assert same["coverage_mm"] > 0.5  # but half the real hands are missing
    one = describe_set(pipe, real[:1].repeat(20, 1, 1), real)
    assert one["apd_mm"] == pytest.approx(0.0, abs=1e-3)
    assert one["coverage_mm"] > same["coverage_mm"]


def test_settings_round_trip_and_travel_with_the_weights(tmp_path):
    """The shipped prior carries its sampling settings, naming its guide; a copy with other
    settings samples with those; unknown settings are refused."""
    import shutil

    from hhmr.paths import weights_dir
    from hhmr.sampling.config import store_config

    cfg = SamplingConfig().with_task("refit3d", x0_iterations=3)
    assert SamplingConfig.from_dict(cfg.to_dict()) == cfg
    assert SamplingConfig.from_dict(None) == SamplingConfig()
    with pytest.raises(ValueError, match="unknown"):
        SamplingConfig.from_dict({"refit3d": {"x0_steps": 3}})
    shipped = HandDiffusionPipeline.from_pretrained()
    assert shipped.config == replace(SamplingConfig(), guide="hhmr_guide.pt")
    copy = tmp_path / "hhmr_prior.pt"
    shutil.copy(weights_dir() / "hhmr_prior.pt", copy)
    shutil.copy(weights_dir() / "hhmr_guide.pt", tmp_path / "hhmr_guide.pt")
    store_config(copy, replace(cfg, guide="hhmr_guide.pt"))
    mine = HandDiffusionPipeline.from_pretrained(copy)
    assert mine.config.refit3d.x0_iterations == 3 and mine.guide is not None
    given = HandDiffusionPipeline.from_pretrained(copy, sampling=SamplingConfig())
    assert given.config == SamplingConfig() and given.guide is None  # names no guide


def test_progress_reports_every_step_and_can_cancel(pipe, hand):
    seen = []
    pipe.generate(2, steps=5, progress=lambda i, total: seen.append((i, total)))
    assert seen == [(i, 5) for i in range(5)]

    class Stop(Exception):
        pass

    def stop(i, total):
        if i == 2:
            raise Stop

    with pytest.raises(Stop):
        pipe.refit3d(hand.keypoint_regressor @ hand.v_template, n=1, steps=5, progress=stop)


def test_compatible_plans_share_a_batch_with_their_own_seeds(pipe, hand):
    from hhmr.sampling import Generate, Options, Refit3D

    joints = hand.keypoint_regressor @ hand.v_template
    plans = [pipe.plan(Generate(), Options(2, steps=3, seed=1)),
             pipe.plan(Refit3D(joints), Options(1, steps=3, seed=2)),
             pipe.plan(Generate(), Options(1, steps=3, seed=3))]
    out = pipe.run(plans)
    assert [h.timings["batched_requests"] for h in out] == [2.0, 1.0, 2.0]
    alone = [pipe.generate(2, steps=3, seed=1), pipe.refit3d(joints, n=1, steps=3, seed=2),
             pipe.generate(1, steps=3, seed=3)]
    for a, b in zip(out, alone, strict=True):
        assert torch.allclose(a.vertices, b.vertices, atol=1e-5)
    with pytest.raises(ValueError, match="no guidance"):
        pipe.plan(Generate(), Options(guidance_strength=1.0))


def test_pose_option_solves_each_hypothesis_rig(pipe, hand):
    from hhmr.hand.pose_fit import PoseFit, skin_with_corrective
    from hhmr.sampling import Generate, Options

    plain = pipe.generate(n=3, steps=2, seed=4)
    assert plain.pose is None and "pose_ms" not in plain.timings  # off by default in Python
    h = pipe.generate(n=3, steps=2, seed=4, pose=True)
    assert torch.equal(h.vertices, plain.vertices)  # the pose never changes the meshes
    p = h.pose
    assert p["global_orient"].shape == (3, 3) and p["hand_pose"].shape == (3, 15, 3)
    assert p["transl"].shape == (3, 3) and p["betas"].shape == (3, hand.num_betas)
    assert p["corrective"].shape == (3, hand.num_vertices, 3) and "pose_ms" in h.timings
    assert hand.joint_limits.contains(p["hand_pose"]).all()
    fit = PoseFit(p["global_orient"], p["hand_pose"], p["betas"], p["transl"], h.vertices,
                  h.joints, p["fit_error"], p["corrective"])
    assert (skin_with_corrective(hand, fit) - h.vertices).abs().max() < 1e-5
    # plans with and without the pose still share one batch
    out = pipe.run([pipe.plan(Generate(), Options(2, steps=2, seed=1, pose=True)),
                    pipe.plan(Generate(), Options(1, steps=2, seed=2))])
    assert [o.timings["batched_requests"] for o in out] == [2.0, 2.0]
    assert out[0].pose["hand_pose"].shape == (2, 15, 3) and out[1].pose is None


def test_refit_without_the_wrist_anchors_it_with_the_pose_solver(pipe, hand):
    from hhmr.data.poses import PosePrior
    from hhmr.models import SCALE
    from hhmr.sampling import Refit3D

    s = PosePrior(hand).sample(1, seed=5)
    with torch.no_grad():
        joints = hand(s.global_orient, s.hand_pose, s.betas).joints[0] + 0.2
    mask = torch.zeros(21)
    mask[9:13] = 1  # the middle finger alone
    wrist = pipe.estimate_wrist(joints, mask)
    assert (wrist - joints[0]).norm() < 0.05
    plan = pipe.plan(Refit3D(joints, mask))
    assert torch.allclose(plan.state["centre"], wrist, atol=1e-5)
    # the net reads the given joints relative to that wrist, as it was trained
    assert torch.allclose(plan.cond.joints3d[0, 9:13] * SCALE, joints[9:13] - wrist, atol=1e-5)
