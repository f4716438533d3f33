import pytest
import torch
from hhmr.hand import load_hand_model
from hhmr.mesh.hierarchy import MeshHierarchy
from hhmr.models import GraphUNet, GraphUNetConfig


@pytest.fixture(scope="session")
def hand():
    return load_hand_model()


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)

# a GraphUNet small enough for fast tests
TINY = GraphUNetConfig(channels=(8, 8, 16, 16), attention_levels=(2, 3), token_dim=16,
                       heads=2, cheb_k=2, time_dim=16, num_patches=4, image_dim=8)


@pytest.fixture(scope="module")
def tiny_net(hand):
    torch.manual_seed(0)
    return GraphUNet(MeshHierarchy.load(hand.hierarchy_path), TINY)
