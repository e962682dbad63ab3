"""save_pretrained / from_pretrained: the Hugging Face Hub mixin's folder layout, for every registered model."""
import json

import pytest
import torch

import deepsets
from deepsets.models import create_model, list_models

pytest.importorskip("safetensors")


def _batch(in_dim=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 9, in_dim, generator=g)
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[1, 5:] = False
    mask[3, 1:] = False
    return x, mask


@pytest.mark.parametrize("output", ["set", "elements"])
@pytest.mark.parametrize("name", list_models())
def test_save_then_load_gives_the_same_model(name, output, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, 3, 2, depth=2, dim=16, output=output).eval()
    with torch.no_grad():  # weights away from their initial values, so a model built anew would differ
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    folder = model.save_pretrained(tmp_path / "m", data_info={"features": ["a", "b", "c"]})
    assert sorted(q.name for q in folder.iterdir()) == ["config.json", "model.safetensors"]
    saved = json.loads((folder / "config.json").read_text())
    assert saved["config"]["depth"] == 2 and saved["config"]["output"] == output and saved["data"]["features"]
    from safetensors.torch import load_file

    assert load_file(str(folder / "model.safetensors")).keys() == model.state_dict().keys()
    x, mask = _batch()
    for backend in ("auto", "reference"):
        loaded = deepsets.from_pretrained(folder, backend=backend)
        assert type(loaded.config) is type(model.config) and loaded.config == model.config
        assert loaded.data_info["features"] == ["a", "b", "c"]
        tol = {} if backend == "auto" else {"rtol": 1e-4, "atol": 1e-5}  # the other backend: float round-off
        with torch.no_grad():
            torch.testing.assert_close(loaded(x, mask), model(x, mask), **tol)


def test_the_folder_loads_through_huggingface_hubs_mixin(tmp_path):
    """PyTorchModelHubMixin reads the folder as its own: config.json as the init arguments, model.safetensors as
    the weights."""
    hub = pytest.importorskip("huggingface_hub")
    from deepsets.models import DeepSets, DeepSetsConfig

    class HubDeepSets(DeepSets, hub.PyTorchModelHubMixin):
        def __init__(self, model: str, config: dict, data: dict | None = None, deepsets_version: str = ""):
            DeepSets.__init__(self, DeepSetsConfig(**config))

    torch.manual_seed(1)
    model = create_model("deepsets++", 3, 1, depth=3, dim=16, backend="reference").eval()
    model.save_pretrained(tmp_path / "m")
    loaded = HubDeepSets.from_pretrained(tmp_path / "m").eval()
    x, mask = _batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, mask), model(x, mask))


def test_from_a_training_checkpoint(tmp_path):
    from deepsets.hub import checkpoint_to_pretrained
    from deepsets.train import TrainConfig, train
    from deepsets.train import load_checkpoint

    cfg = TrainConfig(task="normal-var", depth=2, dim=16, epochs=1, batch_size=8, set_size=16, progress=False,
                      task_options={"n_train": 24, "n_test": 8}, out=str(tmp_path / "run"))
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    folder = checkpoint_to_pretrained(ckpt, tmp_path / "shared")
    model = deepsets.from_pretrained(folder)
    assert model.data_info["task"] == "normal-var" and model.data_info["in_dim"] == 1
    x, mask = _batch(in_dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(x, mask), load_checkpoint(ckpt).model(x, mask))


def test_damaged_or_foreign_folders_give_clear_errors(tmp_path):
    model = create_model("settransformer++", 2, 1, depth=1, dim=16)
    folder = model.save_pretrained(tmp_path / "m")
    raw = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="model.safetensors: not a readable safetensors file"):
        deepsets.from_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        deepsets.from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="not a folder written by save_pretrained"):
        deepsets.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        deepsets.from_pretrained(tmp_path / "nowhere" / "at" / "all")


def test_export_command_writes_the_hub_folder(tmp_path, capsys):
    from deepsets.cli import main
    from deepsets.train import TrainConfig, train

    train(TrainConfig(task="normal-var", depth=2, dim=16, epochs=1, batch_size=8, set_size=16, progress=False,
                      task_options={"n_train": 24, "n_test": 8}, out=str(tmp_path / "run")))
    folder = tmp_path / "shared"
    assert main(["export", "--checkpoint", str(tmp_path / "run" / "checkpoints" / "best.ckpt"), "--format", "hub",
                 "--output", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "model.safetensors" in out and "max abs difference 0" in out
    assert deepsets.from_pretrained(folder).config.depth == 2
