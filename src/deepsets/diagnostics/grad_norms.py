"""Per-layer gradient norms at initialization: the paper's vanishing / exploding gradient figure."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn


def parse_model_spec(spec: str, depth: int | None = None) -> tuple[str, int | None]:
    """``"deepsets++"`` or ``"deepsets++:50"`` -> (name, depth)."""
    if ":" in spec:
        name, d = spec.split(":", 1)
        if not d.isdigit():
            raise ValueError(f"model spec {spec!r}: expected NAME or NAME:DEPTH with an integer depth")
        return name, int(d)
    return spec, depth


def gradient_norms(model_name: str, depth: int | None, task, batch: int = 32, seed: int = 0,
                   set_size: int | None = None, data: str | None = None, **overrides) -> list[dict]:
    """Gradient norm of every linear layer's weight, input to output, after one backward pass at init.

    The batch is the first ``batch`` sets of the task's training data (offline default unless ``data``); the loss
    is the task's (``task``: a name or a :class:`~deepsets.data.Task`). Returns rows ``{layer, name, grad_norm,
    weight_norm}``.
    """
    from ..data import collate_sets, get_task
    from ..factory import create_model
    from ..models.registry import preset_default

    spec = get_task(task, trust_code=True)  # named by the caller (--task): a task given as code is imported
    opts = {"n_train": max(batch, 1)} if data is None else {}  # offline data: generate only the sets needed
    ds = spec.load("train", data=data, set_size=set_size, seed=seed, **opts)
    x, mask, y = collate_sets([ds[i] for i in range(min(batch, len(ds)))])
    torch.manual_seed(seed)
    kw = {"depth": depth, "output": spec.output, **overrides}
    if preset_default(model_name, "pool") != "pma":
        kw.setdefault("pool", spec.pool)
    model = create_model(model_name, ds.in_dim, ds.out_dim, **kw)
    loss, _ = spec.target_kind.loss(model(x, mask), y, mask)
    loss.backward()
    rows = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            rows.append({"layer": len(rows), "name": name, "grad_norm": mod.weight.grad.norm().item(),
                         "weight_norm": mod.weight.norm().item()})
    return rows


def write_grad_norms(results: dict[str, list[dict]], out: str | Path, title: str = "",
                     escape: bool = True) -> dict[str, Path]:
    """CSV + JSON of every model's rows and one PNG with all of them; returns the paths written. ``escape``: text
    cells a spreadsheet would run as formulas get a leading ``'`` (:func:`deepsets.files.escape_csv_cell`)."""
    from ..files import atomic_write_text, csv_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    header = ["model", "layer", "name", "grad_norm", "weight_norm"]
    text = csv_text(header, [{"model": label, **r} for label, rows in results.items() for r in rows], escape=escape)
    paths = {"csv": out / "grad_norms.csv", "json": out / "grad_norms.json"}
    atomic_write_text(paths["csv"], text)
    atomic_write_text(paths["json"], json.dumps(results, indent=1))
    try:
        from .plots import plot_grad_norms

        paths["png"] = out / "grad_norms.png"
        plot_grad_norms(results, paths["png"], title)
    except ImportError:
        pass
    return paths


def first_last_ratio(rows: list[dict]) -> float:
    """Gradient norm of the first layer over that of the last encoder layer before the decoder (~1 is healthy)."""
    return rows[0]["grad_norm"] / max(rows[-1]["grad_norm"], 1e-300)
