"""The shipped model on an accelerator (HHMR_TEST_DEVICE=cuda, as tools/gpu_check.sh runs it):
every task gives finite hands of the right shapes, and the central refit agrees with the CPU's.
On the CPU the same paths are covered by test_sampling.py, so this file skips there."""

import os

import pytest
import torch
from hhmr.data.poses import PosePrior
from hhmr.sampling import HandDiffusionPipeline
from hhmr.training.data import synthetic_batch

DEVICE = os.environ.get("HHMR_TEST_DEVICE", "cpu")
pytestmark = pytest.mark.skipif(DEVICE == "cpu", reason="set HHMR_TEST_DEVICE=cuda on a GPU")


def test_every_task_runs_on_the_device_and_agrees_with_the_cpu():
    pipe = HandDiffusionPipeline.from_pretrained(device=DEVICE)
    on_cpu = HandDiffusionPipeline.from_pretrained(device="cpu")
    hand = on_cpu.hand
    data = synthetic_batch(hand, PosePrior(hand), 1, torch.Generator().manual_seed(7))
    keep = torch.ones(hand.num_vertices, dtype=torch.bool)
    keep[:300] = False
    out = {"generate": pipe.generate(4, seed=1),
           "inpaint": pipe.inpaint(data.vertices[0], keep, n=4),
           "refit3d": pipe.refit3d(data.joints[0], n=4),
           "fit2d": pipe.fit2d(data.keypoints2d[0], None, data.K[0], n=4)}
    for name, h in out.items():
        assert h.vertices.shape == (4, hand.num_vertices, 3), name
        assert torch.isfinite(h.vertices).all() and torch.isfinite(h.scores).all(), name
    cpu = on_cpu.refit3d(data.joints[0], n=1)
    # the central hypothesis is deterministic: devices differ by float rounding alone
    assert (out["refit3d"].vertices[0] - cpu.vertices[0]).norm(dim=-1).max() < 1e-3
