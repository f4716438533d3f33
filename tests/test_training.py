"""`hhmr train`: a tiny run of the shipped recipe, timesteps and their weights, losses, configs."""

import pytest
import torch


def test_tiny_training_run_lowers_the_loss(tmp_path, monkeypatch):
    """The shipped recipe at a tiny size: the loss falls, resume continues, final.pt holds
    the moving average, the default sampling settings and the rig it was trained on, and
    neither loading nor resuming takes another rig."""
    from hhmr.sampling import SamplingConfig
    from hhmr.training.train import load_config, train

    cfg = load_config("configs/prior.toml")
    cfg["model"].update(channels=[8, 8, 16, 16], token_dim=16, heads=2, time_dim=16)
    cfg["train"].update(batch_size=16, max_steps=80, checkpoint_every=20, lr=3e-3,
                        warmup_steps=5)
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
    assert SamplingConfig.from_dict(final["sampling"]) == SamplingConfig()
    from hhmr.hand import load_hand_model
    from hhmr.models.loading import load_denoiser
    from hhmr.training import train as train_module

    hand = load_hand_model()
    assert final["hand_rig"] == hand.rig_digest()
    load_denoiser(tmp_path / "final.pt", hand)
    other = load_hand_model()
    other.keypoint_regressor[9] = other.keypoint_regressor[9].roll(1)  # a moved MCP
    with pytest.raises(ValueError, match="another rig"):
        load_denoiser(tmp_path / "final.pt", other)
    monkeypatch.setattr(train_module, "load_hand_model", lambda: other)
    with pytest.raises(ValueError, match="another rig"):
        train(cfg, tmp_path, resume=tmp_path / "checkpoint.pt", max_steps=90, progress=False)


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


@pytest.mark.parametrize("name,weights", [("prior", "hhmr_prior.pt"), ("guide", "hhmr_guide.pt")])
def test_the_configs_reproduce_the_shipped_recipes(name, weights):
    """`hhmr train --config configs/NAME.toml` is the recipe the shipped file was trained
    with, setting for setting, and the model dataclass defaults are the prior's."""
    from dataclasses import asdict

    from hhmr.models import GraphUNetConfig
    from hhmr.models.conditions import DropoutConfig
    from hhmr.paths import weights_dir
    from hhmr.training.train import load_config

    shipped = torch.load(weights_dir() / weights, map_location="cpu", weights_only=False)
    assert load_config(f"configs/{name}.toml") == shipped["config"]
    if name == "prior":
        model = dict(shipped["config"]["model"])
        model.pop("sigma_data")
        assert GraphUNetConfig.from_dict(model) == GraphUNetConfig()
        assert asdict(DropoutConfig()) == {**asdict(DropoutConfig()),
                                           **shipped["config"]["dropout"]}


def test_a_fine_tune_keeps_the_sampling_settings_it_started_from(tmp_path):
    """Weights fine-tuned from others (`train.init`) sample as those do (their tuned tasks,
    the guide file they name); from scratch, the defaults. The image encoder is always the
    run's own."""
    from dataclasses import replace
    from types import SimpleNamespace

    from hhmr.sampling.config import SamplingConfig
    from hhmr.training.train import sampling_config

    tuned = SamplingConfig().with_task("fit2d", x0_iterations=7)
    tuned = replace(tuned, guide="my_guide.pt",
                    photo=replace(tuned.photo, image_encoder="efficientnet"))
    init = tmp_path / "init.pt"
    torch.save({"sampling": tuned.to_dict()}, init)
    kept = sampling_config(None, init=init)
    assert kept.guide == "my_guide.pt" and kept.fit2d.x0_iterations == 7
    assert kept.photo.image_encoder is None  # this run trains no image slot
    images = SimpleNamespace(encoder="mediapipe")
    assert sampling_config(images, init=init).photo.image_encoder == "mediapipe"
    assert sampling_config(None) == SamplingConfig()
