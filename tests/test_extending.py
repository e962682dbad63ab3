"""What adding a norm or a family takes, shown by doing it: a norm is one class plus one registry entry, a family
is its file (tests/example_family.py) plus one ``register_model`` call. Both then build through ``create_model``,
keep the set properties, run on the backend and in chunks, and train through the same code as the built-in ones."""
import pytest
import torch
from torch import nn

import deepsets
from deepsets import backends
from deepsets.models import chunked_forward, get_preset, register_model
from deepsets.models import registry as model_registry
from deepsets.nn import NORMS, register_norm, zero_padding
from deepsets.testing import (
    check_batch_independence,
    check_padding_invariance,
    check_permutation_invariance,
    random_padded_batch,
)


class RMSNorm(nn.Module):
    """Root-mean-square norm of each element's features (no centering), a learned scale per feature."""

    elementwise = True

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x, mask=None):
        return zero_padding(x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps) * self.weight, mask)


@pytest.fixture
def rms_norm():
    register_norm("rms", RMSNorm)
    yield "rms"
    del NORMS["rms"]


@pytest.fixture
def blocks_pma():
    from example_family import BlocksPMA, BlocksPMAConfig

    register_model("blocks-pma", BlocksPMA, BlocksPMAConfig, "Deep Sets++ blocks + PMA pooling", norm="set")
    yield "blocks-pma"
    del model_registry._PRESETS["blocks-pma"]


def _check_model(model):
    model = model.double().eval()
    x, mask = random_padded_batch(4, 30, model.config.in_dim, min_size=3, seed=1)
    check_permutation_invariance(model, x, mask, atol=1e-9)
    check_padding_invariance(model, x, mask, atol=1e-9)
    check_batch_independence(model, x, mask, atol=1e-9)
    torch.testing.assert_close(chunked_forward(model, x, mask, chunk_size=7), model(x, mask), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(backends.reference(model)(x, mask), model(x, mask), rtol=1e-10, atol=1e-12)
    out = model.train()(x, mask)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", deepsets.list_models())
def test_a_registered_norm_works_in_every_family(rms_norm, name):
    kw = {"num_inducing": 4} if get_preset(name).config_cls.__name__ == "SetTransformerConfig" else {}
    _check_model(deepsets.create_model(name, 3, 2, depth=2, dim=8, norm=rms_norm, **kw))


def test_a_registered_family_builds_checks_and_trains(blocks_pma, tmp_path):
    assert blocks_pma in deepsets.list_models()
    for norm in sorted(NORMS):
        for residual in get_preset(blocks_pma).config_cls.residuals:
            _check_model(deepsets.create_model(blocks_pma, 3, 2, depth=2, dim=8, norm=norm, residual=residual))
    # the backend's Deep Sets++ stack takes over its clean set-norm blocks, as in the built-in family
    assert type(deepsets.create_model(blocks_pma, 3, 2, dim=8).layers).__name__ == "DeepSetsStack"
    # and it trains through the same code as the built-in families
    from deepsets.train.config import TrainConfig
    from deepsets.train import train

    cfg = TrainConfig(task="normal-var", model=blocks_pma, dim=8, depth=2, max_steps=2, batch_size=8, set_size=20,
                      out=str(tmp_path / "run"), progress=False, task_options={"n_train": 32, "n_test": 8})
    summary = train(cfg, echo=lambda *a: None)
    assert summary["steps"] == 2
