"""GraphUNet, its frozen traces, condition tokens and their masking."""

import pytest
import torch
from hhmr.models import Conditions
from hhmr.models.conditions import DropoutConfig, drop_conditions, normalize_keypoints


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
