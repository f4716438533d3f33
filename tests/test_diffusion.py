"""Schedule and DDIM maths, guidance operators."""

import pytest
import torch
from hhmr.diffusion import (
    CosineSchedule,
    DDIMSampler,
    DPMSolverSampler,
    JointOperator,
    ProjectionOperator,
    VertexMaskOperator,
)
from hhmr.diffusion.ddim import gaussian_sample_sd
from hhmr.diffusion.guidance import (
    bone_influence,
    joint_influence,
    project,
    solve_translation,
    solve_weak_perspective,
)
from hhmr.mesh.geometry import unique_edges


def test_cosine_schedule():
    s = CosineSchedule(1000)
    ab = s.alphas_cumprod
    assert len(ab) == 1000 and (ab[1:] < ab[:-1]).all()
    assert ab[0] > 0.999 and ab[-1] < 1e-4
    assert s.alpha_bar(torch.tensor(-1)) == 1.0
    x0 = torch.randn(4, 10, 3, dtype=torch.float64)
    eps = torch.randn_like(x0)
    t = torch.tensor([0, 10, 500, 999])
    x_t = s.add_noise(x0, eps, t)
    assert torch.allclose(s.predict_noise(x_t, x0, t), eps, atol=1e-6)
    # forward noising has the right marginal variance
    big = torch.zeros(20000, 1, 1, dtype=torch.float64)
    noisy = s.add_noise(big + 1.0, torch.randn(20000, 1, 1, dtype=torch.float64),
                        torch.full((20000,), 300))
    assert noisy.var().item() == pytest.approx(1 - s.alpha_bar(torch.tensor(300)).item(),
                                               rel=0.05)


@pytest.mark.parametrize("steps", [1, 10, 25, 50])
@pytest.mark.parametrize("solver", ["ddim", "ddim_eta1", "dpm"])
@pytest.mark.parametrize("spacing", ["linspace", "trailing", "quadratic", "front"])
def test_samplers_with_a_perfect_denoiser_recover_x0(steps, solver, spacing):
    s = CosineSchedule()
    eta = 1.0 if solver == "ddim_eta1" else 0.0
    sampler = DPMSolverSampler(s) if solver == "dpm" else DDIMSampler(s, eta=eta)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 50, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(3, 50, 3, generator=gen, dtype=torch.float64)
    timesteps = sampler.set_timesteps(steps, spacing)
    assert timesteps[0] == 999 and len(timesteps) == steps
    assert (timesteps.diff() < 0).all()
    if spacing == "linspace":
        assert steps == 1 or timesteps[-1] == 0
    elif spacing in ("trailing", "front"):
        assert timesteps[-1] == round(1000 / steps) - 1
        if spacing == "front" and steps > 2:  # denser at high noise: gaps only widen
            assert (timesteps.diff().diff() <= 1).all()
    else:  # denser at low noise: each gap no wider than the one before
        assert timesteps[-1] == round(999 / steps ** 2)
        assert (timesteps.diff().diff() >= -1).all()
    for t in timesteps.tolist():
        x = sampler.step(x0, t, x, generator=gen)
        prev = sampler.previous(t)
        if prev >= 0 and eta == 0:
            # deterministic DDIM stays on the path x_t = sqrt(ab) x0 + sqrt(1-ab) eps
            eps = s.predict_noise(x, x0, torch.tensor([prev]))
            assert torch.isfinite(eps).all()
    assert torch.equal(x, x0)


@pytest.mark.parametrize("spacing", ["quadratic", "front"])
def test_timesteps_strictly_decrease_for_every_count(spacing):
    sampler = DDIMSampler(CosineSchedule())
    for steps in range(1, 1001):
        t = sampler.set_timesteps(steps, spacing)
        assert len(t) == steps and t[0] == 999 and (t.diff() < 0).all(), steps
        assert t[-1] >= 0, steps


def test_front_timesteps_can_end_earlier():
    sampler = DPMSolverSampler(CosineSchedule())
    for steps in (2, 10, 50):
        t = sampler.set_timesteps(steps, "front", last=20)
        assert t[0] == 999 and t[-1] == 20 and (t.diff() < 0).all()
        assert (t.diff().diff() <= 1).all()  # still dense at high noise
    assert sampler.set_timesteps(10, "front", last=99).equal(sampler.set_timesteps(10, "front"))
    for spacing, last in (("trailing", 20), ("front", -1), ("front", 999)):
        with pytest.raises(ValueError, match="last"):
            sampler.set_timesteps(10, spacing, last=last)


def test_dpm_solver_keeps_the_data_scale_that_ten_ddim_steps_shrink():
    """DDIM's first-order steps shrink samples (each by about the cosine of the angle it
    turns through); at 10 steps, Gaussian data comes out more than 10 % too narrow. The
    second-order solver, at the same cost, loses less than 5 %; both converge with more
    steps."""
    sd, sched = 0.65, CosineSchedule()
    ddim10 = gaussian_sample_sd(DDIMSampler(sched), 10, "trailing", sd) / sd
    dpm10 = gaussian_sample_sd(DPMSolverSampler(sched), 10, "trailing", sd) / sd
    ddim200 = gaussian_sample_sd(DDIMSampler(sched), 200, "trailing", sd) / sd
    assert ddim10 < 0.9 and dpm10 > 0.95 and ddim200 > 0.98
    assert abs(gaussian_sample_sd(DPMSolverSampler(sched), 50, "trailing", sd) / sd - 1) < 0.02


def test_ending_front_timesteps_early_makes_dpm_solver_overshoot():
    """Ten front steps ending at t=99 keep Gaussian data's scale within 3 %; ending at t=10
    makes the last step so long that DPM-Solver++'s extrapolation widens it by over 10 %
    (why generation keeps t=99)."""
    sd, sampler = 0.65, DPMSolverSampler(CosineSchedule())
    assert abs(gaussian_sample_sd(sampler, 10, "front", sd) / sd - 1) < 0.03
    assert gaussian_sample_sd(sampler, 10, "front", sd, last=10) / sd > 1.1


def test_a_denoiser_shrunk_at_mid_noise_narrows_samples_more_than_it_shrinks():
    """Along a direction with s.d. 2.7 (hand size, in model units), a denoiser whose gain is
    10 % short at t >= 300 (never on the step that returns x0) narrows samples by more than
    10 %: the sampler compounds it over the steps where that direction is settled. Above
    t = 800, where it is still mostly noise, the same shortfall costs under 5 %."""
    sd, sampler = 2.7, DPMSolverSampler(CosineSchedule())
    exact = gaussian_sample_sd(sampler, 10, "front", sd)
    assert gaussian_sample_sd(sampler, 10, "front", sd, gain=0.9, gain_from=300) < 0.9 * exact
    assert gaussian_sample_sd(sampler, 10, "front", sd, gain=0.9, gain_from=800) > 0.95 * exact
    assert gaussian_sample_sd(sampler, 10, "front", sd, gain=1.0, gain_from=300) == exact


def test_dpm_solver_is_deterministic_and_starts_afresh():
    sched = CosineSchedule()
    with pytest.raises(ValueError, match="eta"):
        DPMSolverSampler(sched, eta=1.0)
    sampler = DPMSolverSampler(sched)
    first = gaussian_sample_sd(sampler, 10, "front", 0.65)
    assert gaussian_sample_sd(sampler, 10, "front", 0.65) == first  # no memory across runs


def test_ddim_rejects_bad_steps():
    sampler = DDIMSampler(CosineSchedule())
    with pytest.raises(ValueError):
        sampler.set_timesteps(0)
    with pytest.raises(ValueError):
        sampler.set_timesteps(5000)
    with pytest.raises(ValueError, match="spacing"):
        sampler.set_timesteps(10, "leading")


def _operators(hand, gen):
    reg = hand.keypoint_regressor
    target = hand.v_template[None] + torch.randn(1, hand.num_vertices, 3, generator=gen) * 0.01
    joints = reg @ target
    K = torch.tensor([[[500.0, 0, 112], [0, 500, 112], [0, 0, 1]]])
    kp = project(joints + torch.tensor([0.0, 0.0, 0.5]), K)
    keep = torch.rand(hand.num_vertices, generator=gen) > 0.5
    mask = torch.ones(1, 21)
    mask[0, 5:9] = 0
    return {
        "joints": JointOperator(reg, joints, mask),
        "joints_aligned": JointOperator(reg, joints + 0.3, mask, align_translation=True),
        "vertices": VertexMaskOperator(target, keep),
        "projection_K": ProjectionOperator(reg, kp, torch.ones(1, 21), K),
        "projection_weak": ProjectionOperator(reg, kp, torch.ones(1, 21), None),
    }, target


def test_guidance_lowers_its_own_objective(hand, gen):
    """A gradient step on x_t through a denoiser lowers || P f(x_t) - P x_obs ||."""
    ops, target = _operators(hand, gen)
    denoiser = torch.nn.Linear(3, 3)  # a stand-in for f(x_t, c, t)
    torch.nn.init.eye_(denoiser.weight)
    for name, op in ops.items():
        x = (hand.v_template[None] + torch.randn(2, hand.num_vertices, 3, generator=gen) * 0.02
             ).requires_grad_(True)
        loss = op.loss(denoiser(x))
        assert loss.shape == (2,) and (loss > 0).all(), name
        grad = torch.autograd.grad(loss.sum(), x)[0]
        step = 1e-3 / grad.abs().max()
        after = op.loss(denoiser(x - step * grad))
        assert (after < loss).all(), name
    # at the observation itself the objective is zero
    assert ops["joints"].loss(target).item() < 1e-8
    assert ops["vertices"].loss(target).item() < 1e-8
    assert ops["projection_K"].loss(target).item() < 1e-6
    assert ops["joints_aligned"].loss(target).item() < 1e-6


def _influence(hand, kind: str) -> torch.Tensor:
    reg = hand.keypoint_regressor
    if kind == "bones":
        return bone_influence(reg, hand.weights, hand.v_template)
    edges = torch.from_numpy(unique_edges(hand.faces.numpy()).astype("int64"))
    return joint_influence(reg, edges, rounds=4)


@pytest.mark.parametrize("kind", ["bones", "smooth"])
def test_joint_influence_spreads_and_steps_converge(hand, gen, kind):
    """x0 guidance's preconditioners: non-negative, wider than the regressor, and gradient
    steps W W^T grad on a joint loss converge at the pipeline's default scale and stay stable
    below twice it (model units: metres / 0.1)."""
    reg = hand.keypoint_regressor
    w = _influence(hand, kind)
    assert w.shape == (hand.num_vertices, 21) and w.min() >= 0
    assert torch.linalg.matrix_norm(reg @ w, ord=2) == pytest.approx(1.0, abs=1e-4)
    assert ((w > 1e-3).sum(0) > (reg > 0).sum(1)).all()
    target = reg @ hand.v_template + torch.randn(21, 3, generator=gen) * 0.005
    op = JointOperator(reg, target[None])
    for scale, iters, shrink in ((0.005, 30, 0.05), (0.0095, 30, 0.5)):
        x = hand.v_template[None] / 0.1
        first = last = float(op.loss(x * 0.1))
        for _ in range(iters):
            x = x.detach().requires_grad_(True)
            grad = torch.autograd.grad(op.loss(x * 0.1).sum(), x)[0]
            x = x - scale * (w @ (w.T @ grad))
            now = float(op.loss(x.detach() * 0.1))
            assert now <= last * (1 + 1e-5)
            last = now
        assert last < shrink * first, scale


def test_bone_influence_follows_the_skeleton(hand):
    """A fingertip keypoint moves only the vertices skinned to its finger's last bone, most
    strongly at the tip end; a knuckle also moves palm vertices, not other fingers'."""
    from hhmr.hand.topology import JOINT_TO_KEYPOINT

    w = bone_influence(hand.keypoint_regressor, hand.weights, hand.v_template)
    index_tip, index_dip, index_mcp = 8, JOINT_TO_KEYPOINT.index(7), JOINT_TO_KEYPOINT.index(5)
    moved = w[:, index_tip] > 0
    assert moved.any() and (hand.weights[moved, index_dip] > 0).all()
    tip_vertex = hand.tip_vertex_ids[1]
    assert w[tip_vertex, index_tip] == w[:, index_tip].max()
    knuckle = w[:, 5] > 1e-3
    assert (hand.weights[knuckle][:, [0, index_mcp]].sum(1) > 0).all()
    middle = hand.weights[:, 7:10].sum(1) > 0.99  # the middle finger's three bones
    assert w[middle, 5].max() < 1e-3


def test_closed_form_camera_solvers(gen):
    joints = torch.randn(2, 21, 3, generator=gen) * 0.05
    K = torch.tensor([[600.0, 0, 100], [0, 610, 120], [0, 0, 1]]).expand(2, 3, 3)
    t = torch.tensor([[0.02, -0.03, 0.6], [-0.1, 0.05, 0.9]])
    kp = project(joints + t[:, None], K)
    assert torch.allclose(solve_translation(joints, kp, torch.ones(2, 21), K), t, atol=1e-4)
    s, t2 = solve_weak_perspective(joints[..., :2], 3.0 * joints[..., :2] + 0.5,
                                   torch.ones(2, 21))
    assert torch.allclose(s, torch.full((2,), 3.0), atol=1e-5)
    assert torch.allclose(t2, torch.full((2, 2), 0.5), atol=1e-5)


def test_projection_operator_fits_a_global_rotation(hand, gen):
    """Keypoints of a rotated hand are matched once the operator fits the rotation."""
    from hhmr.hand.rotations import axis_angle_to_matrix

    reg = hand.keypoint_regressor
    x = hand.v_template[None]
    r = axis_angle_to_matrix(torch.tensor([0.4, -2.2, 0.9]))
    K = torch.tensor([[[600.0, 0, 112], [0, 600, 112], [0, 0, 1]]])
    kp = project((reg @ x) @ r.T + torch.tensor([0.0, 0.0, 0.6]), K)
    fixed = ProjectionOperator(reg, kp, torch.ones(1, 21), K)
    rotating = ProjectionOperator(reg, kp, torch.ones(1, 21), K, solve_rotation=True)
    assert fixed.loss(x).item() > 100.0
    assert rotating.loss(x).item() < 1.0  # (pixels / 2)^2 summed over 21 joints
    assert torch.allclose(rotating.rotate(x), x @ r.T, atol=2e-3)


def test_rotation_fit_keeps_the_full_searchs_answer_when_it_prunes(hand, gen, monkeypatch):
    """Going on from each sample's best start only (and stopping once converged) finds the
    rotation that all ten starts for all iterations find, on a batch of turned noisy hands."""
    import hhmr.diffusion.guidance as guidance
    from hhmr.hand.rotations import random_rotations

    reg = hand.keypoint_regressor
    joints = (reg @ hand.v_template[None])[0]
    joints = joints - joints[:1]
    r = random_rotations(6, gen)
    noisy = joints + 0.004 * torch.randn(6, 21, 3, generator=gen)
    K = torch.tensor([[600.0, 0, 112], [0, 600, 112], [0, 0, 1]]).expand(6, 3, 3)
    kp = project(joints @ r.transpose(1, 2) + torch.tensor([0.0, 0.0, 0.6]), K)

    def fit() -> torch.Tensor:
        return ProjectionOperator(reg, kp, torch.ones(6, 21), K,
                                  solve_rotation=True).fit_rotation(noisy)

    pruned = fit()
    monkeypatch.setattr(guidance, "PRUNE_AFTER", 99)
    monkeypatch.setattr(guidance, "STEP_TOL", 0.0)
    full = fit()
    assert torch.allclose(pruned, full, atol=1e-3)
    assert torch.allclose(full, r, atol=0.05)  # and the fit is the true turn, up to the noise


def test_projection_operator_holds_its_camera_when_asked(hand):
    """With hold_camera the operator reuses its last rotation and translation instead of
    solving them again."""
    from hhmr.hand.rotations import axis_angle_to_matrix

    reg = hand.keypoint_regressor
    x = hand.v_template[None]
    r = axis_angle_to_matrix(torch.tensor([0.3, 1.2, -0.4]))
    K = torch.tensor([[[600.0, 0, 112], [0, 600, 112], [0, 0, 1]]])
    kp = project((reg @ x) @ r.T + torch.tensor([0.0, 0.0, 0.6]), K)
    op = ProjectionOperator(reg, kp, torch.ones(1, 21), K, solve_rotation=True)
    op.hold_camera = True
    assert op.loss(x).item() < 1.0  # nothing to hold yet: solves
    fitted, transl = op.rotation.clone(), op.camera.clone()
    assert torch.allclose(fitted, r, atol=2e-3)
    assert torch.allclose(transl, torch.tensor([[0.0, 0.0, 0.6]]), atol=2e-3)
    turned = x @ axis_angle_to_matrix(torch.tensor([0.0, 0.0, 0.5])).T + 0.01
    held = op.loss(turned)
    assert torch.equal(op.rotation, fitted) and torch.equal(op.camera, transl)
    assert held.item() > 100.0  # the turned, shifted hand no longer fits the held camera
    op.hold_camera = False
    assert op.loss(turned).item() < held.item()
    assert not torch.allclose(op.rotation, fitted, atol=1e-2)
    # weak perspective holds its scale and 2D translation likewise
    weak = ProjectionOperator(reg, kp, torch.ones(1, 21), None, solve_rotation=True)
    weak.hold_camera = True
    first = weak.loss(x)
    scale, shift = weak.camera
    assert torch.allclose(weak.loss(x), first)
    assert weak.loss(turned).item() > first.item() and weak.camera[0] is scale


def test_held_camera_gradient_in_closed_form_is_autograds(hand, gen):
    """x0 guidance's repeated steps take the held camera's loss and gradient in closed form:
    the same as autograd's, sample by sample (confidences, a solved rotation and another
    one); a joint behind the camera's depth clamp gets none through its depth; none without
    a held perspective camera."""
    from hhmr.hand.rotations import axis_angle_to_matrix

    reg = hand.keypoint_regressor
    K = torch.tensor([[600.0, 0, 112], [0, 580, 100], [0, 0, 1]]).expand(3, 3, 3)
    kp = torch.rand(3, 21, 2, generator=gen) * 200
    conf = torch.rand(3, 21, generator=gen) + 0.1
    op = ProjectionOperator(reg, kp, conf, K, solve_rotation=True)
    joints = (reg @ hand.v_template)[None] + 0.01 * torch.randn(3, 21, 3, generator=gen)
    assert op.held_loss_and_grad(joints) is None  # nothing held yet
    op.loss(hand.v_template[None].expand(3, -1, -1))  # solves rotation and camera
    op.hold_camera = True
    assert not torch.allclose(op.rotation, torch.eye(3).expand(3, 3, 3), atol=1e-3)

    def autograd(j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = j.clone().requires_grad_(True)
        loss = op.joint_loss(z)
        return loss.detach(), torch.autograd.grad(loss.sum(), z)[0]

    for rotation in (op.rotation, axis_angle_to_matrix(torch.tensor([[0.2, -0.3, 0.1]] * 3))):
        op.rotation = rotation
        loss, grad = op.held_loss_and_grad(joints)
        auto_loss, auto_grad = autograd(joints)
        assert torch.allclose(loss, auto_loss, rtol=1e-5)
        scale = auto_grad.abs().amax((1, 2), keepdim=True)  # each sample's own
        assert ((grad - auto_grad).abs() <= 1e-5 * scale).all()
    behind = joints.clone()
    behind[0, 5] = -op.rotation[0].T @ op.camera[0] * 2  # depth -camera z: clamped
    grad, auto_grad = op.held_loss_and_grad(behind)[1], autograd(behind)[1]
    assert torch.allclose(grad[0, 5], auto_grad[0, 5], rtol=1e-4)
    rest = torch.ones(3, 21, dtype=torch.bool)
    rest[0, 5] = False
    scale = auto_grad[rest].abs().max()
    assert ((grad - auto_grad)[rest].abs() <= 1e-5 * scale).all()
    weak = ProjectionOperator(reg, kp, conf, None)
    weak.loss(hand.v_template[None].expand(3, -1, -1))
    weak.hold_camera = True
    assert weak.held_loss_and_grad(joints) is None


def test_descend_takes_back_steps_that_raise_the_loss(gen):
    """x0 guidance's descent: plain gradient steps at a stable scale; at a scale that would
    diverge, every kept step lowers the loss and the result still converges."""
    from hhmr.sampling.guidance import descend

    target = torch.randn(3, 5, 2, generator=gen)
    weight = torch.tensor([1.0, 2.0, 3.0])[:, None, None]  # per-sample curvature

    def loss_of(z):
        return (weight * (z - target).square()).sum((1, 2))

    def run(scale, iters, retries):
        ident = lambda c: c  # noqa: E731
        return descend(loss_of, torch.zeros_like(target), lambda g: -g, ident, ident, scale,
                       iters, retries=retries)

    stable = run(0.1, 5, 0)
    plain = torch.zeros_like(target)
    for _ in range(5):
        plain = plain - 0.1 * 2 * weight * (plain - target)
    assert torch.allclose(stable, plain, atol=1e-6)
    start = loss_of(torch.zeros_like(target))
    wild_plain = torch.zeros_like(target)
    for _ in range(10):  # plain steps of 1.0 flip and grow for curvatures 2 and 3...
        wild_plain = wild_plain - 2 * weight * (wild_plain - target)
    assert (loss_of(wild_plain)[1:] > start[1:]).all()
    wild = run(1.0, 10, 8)  # ...descend halves a sample's step until it lowers the loss
    assert (loss_of(wild) < 1e-3 * start).all()


def test_autoguidance_extrapolates_away_from_the_guide():
    """x0 = D_guide + w (D - D_guide): w = 1 is the net alone, w = 0 the guide alone; it acts
    on its timesteps only, and rejects a non-finite weight or an empty interval."""
    from hhmr.diffusion.autoguidance import AutoGuidance

    d, g = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 3.0])
    assert torch.equal(AutoGuidance(1.0).combine(d, g), d)
    assert torch.equal(AutoGuidance(0.0).combine(d, g), g)
    assert torch.allclose(AutoGuidance(2.0).combine(d, g), torch.tensor([1.5, 1.0]))
    auto = AutoGuidance(2.0, t_min=500)
    assert auto.active(999) and auto.active(500) and not auto.active(499)
    assert not AutoGuidance(1.0).active(999)  # the net alone needs no guide
    for bad in ({"weight": float("nan")}, {"weight": float("inf")},
                {"weight": 2.0, "t_min": 600, "t_max": 500}):
        with pytest.raises(ValueError):
            AutoGuidance(**bad)


def test_autoguidance_by_a_more_shrunk_guide_restores_the_data_scale():
    """A denoiser 10 % short of the exact gain narrows generated samples; a guide 20 % short
    (the same error, stronger) at weight 2 cancels it: 0.8 + 2 (0.9 - 0.8) = 1. Along the
    hand-size direction (s.d. 2.7 model units) with ten DPM-Solver++ front steps."""
    from hhmr.diffusion.autoguidance import AutoGuidance

    sd, sampler = 2.7, DPMSolverSampler(CosineSchedule())
    exact = gaussian_sample_sd(sampler, 10, "front", sd)
    net = gaussian_sample_sd(sampler, 10, "front", sd, gain=0.9, gain_from=300)
    gain = float(AutoGuidance(2.0).combine(torch.tensor(0.9), torch.tensor(0.8)))
    guided = gaussian_sample_sd(sampler, 10, "front", sd, gain=gain, gain_from=300)
    assert net < 0.9 * exact
    assert guided == pytest.approx(exact, rel=1e-6)
