"""Export a set model to ONNX or a ``torch.export`` program (``.pt2``), and check the file against the model.

The exported graph has two inputs and one output, whatever the family:

- ``x``: float32 ``[B, N, D]``, ``mask``: bool ``[B, N]`` (True = element present), ``B`` and ``N`` dynamic;
- ``y``: ``[B, out_dim]``, or ``[B, N, out_dim]`` for per-element outputs (``output="elements"``; zeros in
  padded rows).

Padded rows may hold anything (NaN and inf included), as with the PyTorch model. The reference layers of
:mod:`deepsets.nn` are exported (the CPU backend's C kernels are not traceable; they compute the same function).
Both formats are traced once with ``torch.export.export``; ONNX is converted from that program by PyTorch's
``torch.export``-based ONNX exporter (``torch.onnx.export(..., dynamo=True)``). The input checks that read the
mask's values (empty sets) are skipped while tracing; the exported graph gives the documented output of the
layers for an empty set instead of an error.

``deepsets export --checkpoint CKPT --format onnx|pt2 --output FILE`` writes the file and checks it with
onnxruntime (ONNX) or the loaded program (pt2) against the checkpoint's model on padded batches, before renaming
it into place; ``--format hub`` writes a :func:`deepsets.hub.save_pretrained` folder instead.

A classifier's ``y`` is logits (a softmax over the last axis gives the class probabilities); the file records
the feature names, the target kind, the class labels and what ``y`` holds (:func:`export_metadata`: ONNX
``metadata_props``, a pt2 file's extra file ``deepsets.json``; :func:`read_metadata` reads them back).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ._version import __version__
from .backends import reference
from .checkpoint import open_checkpoint
from .files import atomic_write_bytes, check_free_space, refuse_input_as_output, write_error
from .models.base import SetModel
from .models.registry import preset_name

FORMATS = ("onnx", "pt2")
EXTRA = "pip install deepsets[export]"
CHECK_SIZES = (1, 7, 100)  # set sizes the exported file is compared on (each batch also holds smaller sets)
RTOL, ATOL = 1e-4, 1e-5  # |exported - PyTorch| <= ATOL + RTOL * max|PyTorch| (float32 round-off)


class ExportCheckError(ValueError):
    """The exported file's outputs differ from the PyTorch model's beyond float round-off."""


def require_onnx() -> None:
    """Import the ONNX libraries, or raise an ImportError naming the extra that installs them."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)} (not installed): {EXTRA}")


def resolve_format(path: str | Path, format: str | None = None) -> str:
    """``format`` if given (checked), else the one the file name ends with (``.onnx`` / ``.pt2``)."""
    if format is None:
        format = Path(path).suffix.lstrip(".").lower()
        if format not in FORMATS:
            raise ValueError(f"cannot tell the export format from {Path(path).name!r}; give a format "
                             f"({' or '.join(FORMATS)}) or a file name ending in .onnx or .pt2")
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; valid choices: {', '.join(map(repr, FORMATS))}")
    return format


def set_model(model: nn.Module) -> nn.Module:
    """The set model itself: a checkpoint (:func:`deepsets.checkpoint.open_checkpoint`) or a training module
    (``deepsets.train.load_checkpoint``) holds it as ``.model``."""
    inner = getattr(model, "model", None)
    if not isinstance(model, SetModel) and isinstance(inner, SetModel):
        model = inner
    if not isinstance(model, SetModel):
        raise TypeError(f"expected a deepsets set model (create_model / load_checkpoint), got {type(model).__name__}")
    return model


def padded_batch(sizes: Sequence[int], in_dim: int, n: int | None = None, seed: int = 0,
                 garbage: bool = True) -> tuple[Tensor, Tensor]:
    """A batch of ``len(sizes)`` random sets with ``sizes[i]`` elements each, padded to ``n`` (default: the
    largest); with ``garbage`` the padded rows hold large values, inf and NaN (which must not matter)."""
    n = max(sizes) if n is None else n
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(sizes), n, in_dim, generator=g)
    mask = torch.arange(n)[None, :] < torch.tensor(list(sizes))[:, None]
    if garbage:
        junk = 1e4 * torch.randn(x.shape, generator=g)
        junk[..., 0] = torch.where(torch.rand(x.shape[:2], generator=g) < 0.5, float("nan"), float("inf"))
        x = torch.where(mask[..., None], x, junk)
    return x, mask


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' own chatter (deprecation notes, optional-package notices); errors still raise."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "torch.fx")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def trace(model: nn.Module, example_size: int = 8):
    """The model's reference layers as a ``torch.export`` program with inputs ``x [B, N, D]``, ``mask [B, N]``
    and dynamic ``B``, ``N`` (the model passed in is left as it was)."""
    model = reference(copy.deepcopy(set_model(model))).float().eval()
    x, mask = padded_batch([example_size, example_size // 2], model.config.in_dim, garbage=False)
    batch, elements = torch.export.Dim("B", min=1), torch.export.Dim("N", min=1)
    dims = {0: batch, 1: elements}
    with _quiet(), torch.no_grad():
        return torch.export.export(model, (x, mask), dynamic_shapes={"x": dims, "mask": dims}, strict=False)


def export_metadata(model: nn.Module) -> dict[str, str]:
    """What an exported file records about the model (ONNX ``metadata_props``; a pt2 file's extra file
    ``deepsets.json``), all strings: ``deepsets_version``, ``model``, ``inputs``, ``target`` (``regression``,
    ``classification``, ``elements`` or ``unknown``), ``features`` and ``classes`` (JSON lists, where the training
    data named them) and ``y`` (what the output holds: a classifier's ``y`` is logits, softmax gives the class
    probabilities in the order of ``classes``). ``model``: a checkpoint, a training module or a set model
    (its ``data_info`` where :func:`deepsets.from_pretrained` set one)."""
    import json

    m = set_model(model)
    hp = getattr(model, "hparams", None) or {}
    info = dict(hp.get("data_info") or getattr(m, "data_info", None) or {})
    target = getattr(getattr(model, "target", None), "name", None) or info.get("target")
    if target is None and m.config.output == "elements":
        target = "elements"
    c = m.config
    meta = {"deepsets_version": __version__, "target": str(target or "unknown"),
            "inputs": f"x float32 [B, N, {c.in_dim}] (features in the order of 'features'), mask bool [B, N] "
                      f"(True = element present)"}
    try:
        meta["model"] = preset_name(m)
    except TypeError:  # a family that is not registered
        meta["model"] = type(m).__name__
    if info.get("features"):
        meta["features"] = json.dumps([str(f) for f in info["features"]])
    if target == "classification":
        classes = info.get("classes") or list(range(c.out_dim))
        meta["classes"] = json.dumps(classes)
        meta["y"] = (f"[B, {c.out_dim}] logits, one per class in the order of 'classes' (not probabilities): "
                     f"softmax over the last axis gives the class probabilities")
    elif target == "elements" or c.output == "elements":
        meta["y"] = ("[B, N, 1] logits per element (padded rows 0): softmax over a set's present elements gives "
                     "the probability that each is the odd one")
    elif target == "regression":
        meta["y"] = f"[B, {c.out_dim}] predicted values (in the units of the training labels)"
    else:
        meta["y"] = f"[B, {c.out_dim}] the model's output"
    return meta


def export_model(model: nn.Module, path: str | Path, format: str | None = None, *,
                 opset: int | None = None, check: bool = False, check_sizes: Sequence[int] = CHECK_SIZES) -> Path:
    """Write ``model`` (a set model or a training module) to ``path`` as ``onnx`` or ``pt2`` (default: from the
    file name). Inputs ``x`` float32 ``[B, N, D]`` and ``mask`` bool ``[B, N]``, output ``y``; ``B`` and ``N``
    dynamic; :func:`export_metadata` is stored in the file. Returns the path. ONNX needs the ``export`` extra
    (``pip install deepsets[export]``).

    The file is written to a temporary file in the same folder and renamed to ``path`` only when complete (with
    ``check``: and compared with the model, :func:`check_export` on ``check_sizes``), so ``path`` is never a
    partial file: a failure (full disk, a failed check) removes the temporary file and leaves a previous file at
    ``path`` as it was. A folder with less free space than the file needs is refused before writing; a failed
    write raises :class:`deepsets.files.WriteError` (``cannot write PATH: <reason>``)."""
    return _export(model, path, format, opset=opset, check_sizes=check_sizes if check else None)[0]


def _export(model: nn.Module, path: str | Path, format: str | None = None, *, opset: int | None = None,
            check_sizes: Sequence[int] | None = None) -> tuple[Path, dict | None]:
    """:func:`export_model`; also returns :func:`check_export`'s result (``None`` without ``check_sizes``)."""
    import io
    import json

    path = Path(path)
    format = resolve_format(path, format)
    if format == "onnx":
        require_onnx()
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a file name ending in .{format}")
    meta = export_metadata(model)
    program = trace(model)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(path, e) from None
    if format == "pt2":
        for node in program.graph.nodes:  # Python stack traces of the machine that exported: not needed to run
            node.meta.pop("stack_trace", None)
        buf = io.BytesIO()  # serialised in memory: a full disk is a Python error on our write, not an abort in C++
        torch.export.save(program, buf, extra_files={"deepsets.json": json.dumps(meta)})
        data = buf.getvalue()
    else:
        x, mask = padded_batch([8, 4], set_model(model).config.in_dim, garbage=False)
        with _quiet():
            onnx_program = torch.onnx.export(program, (x, mask), input_names=["x", "mask"], output_names=["y"],
                                             dynamo=True, opset_version=opset, external_data=False, verbose=False)
            proto = onnx_program.model_proto
        _tidy_onnx(proto, meta)
        data = proto.SerializeToString()
    check_free_space(path, len(data))
    result = {}

    def verify(tmp: Path) -> None:  # the complete temporary file, before it is renamed to path
        result["check"] = check_export(tmp, model, format, sizes=check_sizes, label=path, written=False)

    atomic_write_bytes(path, data, verify=verify if check_sizes is not None else None)
    return path, result.get("check")


def _tidy_onnx(proto, meta: dict[str, str] | None = None) -> None:
    """Name the dynamic axes ``B`` and ``N`` (the exporter writes its symbol names), drop the per-node debugging
    metadata (Python stack traces of the machine that exported, most of the file's size) and store ``meta`` in
    the model's ``metadata_props``."""
    x_dims = proto.graph.input[0].type.tensor_type.shape.dim
    rename = {x_dims[0].dim_param: "B", x_dims[1].dim_param: "N"}
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]
    for node in proto.graph.node:
        del node.metadata_props[:]
    keep = [p for p in proto.metadata_props if p.key not in (meta or {})]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in (meta or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def _exported_file(path, format):
    """``(path, format)`` of an exported file that exists (else FileNotFoundError naming it)."""
    path = Path(path)
    format = resolve_format(path, format)
    if not path.is_file():
        raise FileNotFoundError(f"exported file does not exist: {path}")
    return path, format


def read_metadata(path: str | Path, format: str | None = None) -> dict[str, str]:
    """The :func:`export_metadata` an exported file holds (ONNX ``metadata_props``; pt2 ``deepsets.json``)."""
    import json

    path, format = _exported_file(path, format)
    if format == "onnx":
        require_onnx()
        import onnx

        return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    extra = {"deepsets.json": ""}
    with _quiet():
        torch.export.load(path, extra_files=extra)
    return json.loads(extra["deepsets.json"] or "{}")


def load_exported(path: str | Path, format: str | None = None,
                  threads: int | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """A function ``f(x, mask) -> y`` running the exported file itself: onnxruntime for ONNX (``threads``: its
    intra-op threads, default onnxruntime's), the loaded ``torch.export`` program for pt2 (PyTorch's threads).
    ``x``/``mask`` may be tensors or NumPy arrays; ``y`` is a tensor."""
    path, format = _exported_file(path, format)
    if format == "onnx":
        require_onnx()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def run_onnx(x, mask) -> Tensor:
            feed = {"x": np.asarray(x, dtype=np.float32), "mask": np.asarray(mask, dtype=bool)}
            return torch.from_numpy(session.run(["y"], feed)[0])

        return run_onnx
    with _quiet():
        module = torch.export.load(path).module()

    def run_pt2(x, mask) -> Tensor:
        with torch.no_grad():
            return module(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(mask, dtype=torch.bool))

    return run_pt2


def check_export(path: str | Path, model: nn.Module, format: str | None = None,
                 sizes: Sequence[int] = CHECK_SIZES, rtol: float = RTOL, atol: float = ATOL,
                 seed: int = 0, label: str | Path | None = None, written: bool = True) -> dict:
    """Compare the exported file at ``path`` with ``model`` (eager PyTorch, its own backend) on padded batches.

    For each ``n`` in ``sizes`` a batch of three sets of ``n``, ``ceil(n / 2)`` and 1 elements, padded to ``n``
    with garbage (large values, inf, NaN) in the padded rows. Raises :class:`ExportCheckError` if any output
    differs by more than ``atol + rtol * max|PyTorch output|``; returns ``{"max_abs_diff", "sizes", "worst"}``.
    ``label``: the file's name in messages (default ``path``); ``written=False``: the message says that
    nothing was written (:func:`export_model` checks its temporary file before renaming it).
    """
    run = load_exported(path, format)
    name = path if label is None else label
    verdict = "the file was written but should not be used" if written else "nothing was written"
    model = set_model(model)
    was_training = model.training
    model.eval()
    worst, report = 0.0, []
    try:
        for i, n in enumerate(sizes):
            x, mask = padded_batch([n, (n + 1) // 2, 1], model.config.in_dim, seed=seed + i)
            with torch.no_grad():
                ref = model(x, mask).float()
            got = run(x, mask)
            if tuple(got.shape) != tuple(ref.shape):
                raise ExportCheckError(f"{name}: the exported model's output has shape {list(got.shape)} on sets of "
                                       f"{n} elements; the PyTorch model's has {list(ref.shape)}")
            diff = float((got - ref).abs().max()) if ref.numel() else 0.0
            if not np.isfinite(diff):
                diff = float("inf")
            tol = atol + rtol * float(ref.abs().max())
            report.append((n, diff, tol))
            worst = max(worst, diff)
            if not diff <= tol:
                raise ExportCheckError(
                    f"{name}: the exported model differs from the PyTorch model: max |difference| = {diff:.3g} on "
                    f"sets of {n} elements (tolerance {tol:.3g}); {verdict}")
    finally:
        model.train(was_training)
    return {"max_abs_diff": worst, "sizes": list(sizes),
            "per_size": [{"set_size": n, "max_abs_diff": d, "tolerance": t} for n, d, t in report]}


def _export_hub(args) -> int:
    """``--format hub``: the checkpoint's model as a save_pretrained folder, loaded back and compared."""
    from .hub import CONFIG, WEIGHTS, checkpoint_to_pretrained, from_pretrained

    for name in ("", WEIGHTS, CONFIG):  # the folder, or a file it would replace, is the checkpoint
        refuse_input_as_output(Path(args.output) / name if name else args.output,
                               {"--checkpoint": args.checkpoint})
    ckpt = open_checkpoint(args.checkpoint, task=args.task)  # --task: the checkpoint's task, named again
    model = ckpt.model
    folder = checkpoint_to_pretrained(ckpt, args.output)
    print(f"wrote {folder / 'model.safetensors'} and {folder / 'config.json'} (load with "
          f"deepsets.from_pretrained({str(folder)!r}); push with deepsets.hub.push_to_hub)")
    if args.no_check:
        return 0
    loaded = from_pretrained(folder, trust_code=None)  # the weights just written (the task was checked above)
    worst = 0.0
    with torch.no_grad():
        for n in args.check_sizes:
            x, mask = padded_batch([n, max(1, n // 2)], model.config.in_dim)
            y = model(x, mask)
            worst = max(worst, float((loaded(x, mask) - y).abs().max()))
            if worst > 1e-6 * (1 + float(y.abs().max())):  # the same weights on the same layers
                raise ExportCheckError(f"{folder}: the saved model differs from the checkpoint's (max |difference| "
                                       f"{worst:.3g} on sets of {n} elements)")
    print(f"checked: the folder loads and predicts as the checkpoint on padded sets of "
          f"{', '.join(map(str, args.check_sizes))} elements: max abs difference {worst:.3g}")
    return 0


def _cmd_export(args) -> int:
    if args.format == "hub":
        return _export_hub(args)
    format = resolve_format(args.output, args.format)
    bad = [n for n in args.check_sizes if n < 1]
    if bad:
        raise ValueError(f"--check-sizes: set sizes must be at least 1, got {bad[0]}")
    refuse_input_as_output(args.output, {"--checkpoint": args.checkpoint})
    if format == "onnx":
        require_onnx()  # before loading anything: a missing extra is the first thing to say
    module = open_checkpoint(args.checkpoint, task=args.task)  # --task: the checkpoint's task, named again
    model = set_model(module)
    # written to a temporary file, checked against the model there, then renamed into place
    path, result = _export(module, args.output, format, check_sizes=None if args.no_check else args.check_sizes)
    c = model.config
    y = f"[B, N, {c.out_dim}]" if c.output == "elements" else f"[B, {c.out_dim}]"
    size = path.stat().st_size / 1e6
    logits = "; y holds logits: softmax gives the class probabilities" if module.target.name != "regression" else ""
    print(f"wrote {path} ({format}, {size:.2f} MB): inputs x float32 [B, N, {c.in_dim}], mask bool [B, N] "
          f"(True = element present); output y {y}{logits}")
    if args.no_check:
        print("not checked (--no-check)")
        return 0
    runner = "onnxruntime" if format == "onnx" else "torch.export.load"
    sizes = ", ".join(map(str, result["sizes"]))
    print(f"checked with {runner} against the checkpoint's PyTorch model on padded sets of {sizes} elements: "
          f"max abs difference {result['max_abs_diff']:.3g}")
    return 0


def add_export_command(sub) -> None:
    """``deepsets export``."""
    p = sub.add_parser("export", help="export a trained model to ONNX, torch.export (.pt2) or a Hub folder, checked "
                                      "on export",
                       description="Write a checkpoint's model as ONNX or a torch.export program (.pt2) with inputs "
                                   "x float32 [B, N, D] and mask bool [B, N] (True = element present), dynamic B "
                                   "and N, and output y (a classifier's y is logits: softmax gives probabilities); "
                                   "the file is compared with the PyTorch model before it is renamed into place. "
                                   "--format hub writes a save_pretrained folder. ONNX needs "
                                   f"the export extra: {EXTRA}")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by deepsets train (.ckpt)")
    p.add_argument("--format", choices=[*FORMATS, "hub"], default=None,
                   help="onnx or pt2 (default: from the --output file name), or hub: a folder of model.safetensors "
                        "+ config.json (deepsets.from_pretrained; the Hugging Face Hub layout)")
    p.add_argument("--output", required=True, help="the file to write (.onnx or .pt2; a folder for hub); not the "
                                                   "--checkpoint")
    p.add_argument("--check-sizes", type=int, nargs="+", default=list(CHECK_SIZES), metavar="N",
                   help="set sizes to compare the exported file on (default: %(default)s)")
    p.add_argument("--no-check", action="store_true", help="write the file without comparing it to the model")
    from .train.cli import add_task_flag

    add_task_flag(p)
    p.set_defaults(func=_cmd_export)
