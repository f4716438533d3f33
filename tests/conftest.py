import pytest
import torch
from hhmr.hand import load_hand_model


@pytest.fixture(scope="session")
def hand():
    return load_hand_model()


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
