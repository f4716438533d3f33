"""Image tokens: encoder shapes, masking in training, the zero-initialised start of a new
image slot, and the tasks and modes that take them."""

import numpy as np
import pytest
import torch
from hhmr.encoders import PATCH_GRID, tokens_from_map
from hhmr.models.conditions import Conditions, DropoutConfig, drop_conditions


def test_tokens_are_pooled_patches_then_the_global_mean():
    fmap = np.random.default_rng(0).random((2, 7, 7, 5)).astype(np.float32)
    tok = tokens_from_map(fmap)
    assert tok.shape == (2, PATCH_GRID ** 2 + 1, 5)
    assert np.allclose(tok[:, -1], fmap.mean((1, 2)), atol=1e-6)
    assert np.allclose(tok[:, 0], fmap[:, 0:2, 0:2].mean((1, 2)), atol=1e-6)  # top left
    assert np.allclose(tok[:, PATCH_GRID - 1], fmap[:, 0:2, 5:7].mean((1, 2)), atol=1e-6)


def crops(n: int = 2) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 255, (n, 224, 224, 3)).astype(np.uint8)


def test_the_mediapipe_encoder_reads_its_feature_map():
    pytest.importorskip("ai_edge_litert")
    from hhmr.encoders import MediaPipeEncoder

    enc = MediaPipeEncoder()
    x = crops()
    tok = enc(x)
    assert tok.shape == (2, 17, 1152) and np.isfinite(tok).all()
    assert tok.min() >= 0 and tok.max() <= 6  # ReLU6 activations
    assert np.array_equal(enc(x), tok)  # frozen, deterministic
    assert not np.allclose(tok[0], tok[1])


def test_the_efficientnet_encoder_reads_its_feature_map():
    pytest.importorskip("efficientnet_lite_pytorch")
    from hhmr.encoders import EfficientNetEncoder

    tok = EfficientNetEncoder()(crops())
    assert tok.shape == (2, 17, 1280) and np.isfinite(tok).all()
    assert not np.allclose(tok[0], tok[1])


def test_training_masks_keep_absent_images_absent():
    b = 200
    mask = torch.zeros(b, 17)
    mask[100:] = 1  # the first half of the batch has no image
    cond = Conditions(image_tokens=torch.rand(b, 17, 8), image_mask=mask)
    out = drop_conditions(cond, DropoutConfig(p_patch=0.2, p_modality=0.3, p_all=0.0),
                          torch.Generator().manual_seed(0))
    assert out.image_mask[:100].eq(0).all()
    kept = out.image_mask[100:]
    assert 0.4 < kept.mean() < 0.7  # 0.7 of the images, 0.8 of their patches
    assert (kept.sum(1) == 0).float().mean() > 0.2  # whole images dropped


def test_a_mixed_batch_marks_which_half_has_images(hand):
    from hhmr.data.poses import PosePrior
    from hhmr.training.data import synthetic_batch
    from hhmr.training.images import concat_batches

    gen = torch.Generator().manual_seed(0)
    a = synthetic_batch(hand, PosePrior(hand), 3, gen)
    b = synthetic_batch(hand, PosePrior(hand), 2, gen)
    b.conditions.image_tokens = torch.rand(2, 17, 8)
    both = concat_batches(a, b)
    assert both.vertices.shape[0] == 5
    assert both.conditions.image_tokens.shape == (5, 17, 8)
    assert both.conditions.image_mask.tolist() == [[0.0] * 17] * 3 + [[1.0] * 17] * 2
    assert both.conditions.image_tokens[:3].eq(0).all()
    assert both.conditions.joints3d_mask.eq(1).all()


def test_a_new_image_slot_starts_exactly_as_the_net_it_came_from(hand, tmp_path):
    """init_from: the projection for a wider encoder starts at zero and its patches at the
    null image, so image tokens change nothing until training moves them."""
    from hhmr.models.loading import build_denoiser
    from hhmr.paths import weights_dir
    from hhmr.training.train import init_from, load_config

    model = dict(load_config("configs/prior.toml")["model"], image_dim=24)
    torch.manual_seed(0)
    net = build_denoiser(model, hand)
    skipped = init_from(net, weights_dir() / "hhmr_prior.pt")
    assert skipped == ["net.conditions.image.weight"]
    x = torch.randn(2, hand.num_vertices, 3)
    t = torch.tensor([500, 100])
    kp = Conditions(keypoints2d=torch.rand(2, 21, 2), keypoints2d_conf=torch.ones(2, 21))
    with_image = Conditions(**{**kp.__dict__, "image_tokens": torch.rand(2, 17, 24) * 6})
    with torch.no_grad():
        assert torch.equal(net(x, t, kp), net(x, t, with_image))
        net.net.conditions.image.weight.add_(0.01)  # once trained, the image counts
        assert not torch.allclose(net(x, t, kp), net(x, t, with_image))


def test_tasks_take_image_tokens_of_the_nets_slot(tiny_net, hand):
    from hhmr.sampling import Fit2D, Generate, HandDiffusionPipeline, Options

    pipe = HandDiffusionPipeline(tiny_net, hand)
    assert pipe.image_slot() == (5, 8)  # the tiny net: 4 patches + global, width 8
    tok = torch.rand(5, 8)
    plan = pipe.plan(Fit2D(torch.rand(21, 2) * 100, image_tokens=tok), Options(n=3))
    assert plan.cond.image_tokens.shape == (3, 5, 8)
    assert plan.key() != pipe.plan(Fit2D(torch.rand(21, 2) * 100), Options(n=3)).key()
    h = pipe.run([pipe.plan(Generate(image_tokens=tok), Options(n=2, steps=2))])[0]
    assert h.vertices.shape == (2, hand.num_vertices, 3)
    with pytest.raises(ValueError, match="image_tokens must have shape"):
        pipe.plan(Fit2D(torch.rand(21, 2), image_tokens=torch.rand(17, 1152)), Options())
    with pytest.raises(ValueError, match="NaN"):
        pipe.plan(Generate(image_tokens=tok * float("nan")), Options())


def test_image_modes_need_weights_with_an_encoder(tiny_net, hand):
    from hhmr.evaluation.photos import supported_modes
    from hhmr.reconstruct import Detection, fit_mode
    from hhmr.sampling import HandDiffusionPipeline

    pipe = HandDiffusionPipeline(tiny_net, hand)
    det = Detection(np.random.default_rng(0).uniform(50, 150, (21, 2)).astype(np.float32),
                    np.zeros((21, 3), np.float32), "right", 1.0)
    K = np.array([[200, 0, 100], [0, 200, 100], [0, 0, 1]], np.float32)
    with pytest.raises(ValueError, match="trained with image tokens"):
        fit_mode(pipe, det, "right", K, "skel2d+image", rgb=np.zeros((200, 200, 3), np.uint8))
    assert supported_modes(pipe) == ("skel2d", "skel2d+lifted", "skel2d+world",
                                     "skel2d+world_all")

