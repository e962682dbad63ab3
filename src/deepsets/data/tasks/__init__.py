"""Tasks: a source of sets + a target kind (loss, metric, prediction columns) + defaults, one file each.

The paper's six tasks are presets (``normal_var.py`` ... ``set_anomaly.py``); ``regression`` and
``classification`` read your own sets from any source (:mod:`deepsets.data.sources`). Everything that needs task
knowledge (training, evaluation, prediction, ``data list|build|info``, ``reproduce``) loops over :data:`TASKS` or
asks a :class:`Task`. A new task is one file that calls :func:`register_task`; the command line also takes
``--task module:NAME`` or ``--task path/to/file.py:NAME`` (the object ``NAME`` there is a :class:`Task`), so a
task defined outside the package needs no edit of it.

A task given as code is imported only where the user names it (``--task``, :func:`import_task`, :func:`load_task`,
``trust_code=True``): :func:`get_task` returns registered tasks only, so a name read from a checkpoint, a run's
``config.yaml``, a ``--config`` file or a saved model's ``config.json`` never runs code
(:class:`UntrustedTaskError` says how to name it).
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .._base import DataError, SetDataset, check_exists, open_h5
from ..targets import Target, get_target

__all__ = ["SOURCE_OPTIONS", "TASKS", "Task", "UntrustedTaskError", "call_with_options", "detect_task", "get_task",
           "import_task", "is_code", "list_tasks", "load_task", "paper_tasks", "recorded_task", "register_task"]


@dataclass(frozen=True)
class Task:
    """What a task is.

    Attributes:
        name: the task's name (``--task``).
        target: ``"regression"``, ``"classification"`` or ``"elements"`` (see :mod:`deepsets.data.targets`).
        description: one line for ``deepsets data list``.
        loader: ``loader(task, split, data, base, options) -> SetDataset``: ``data`` is ``None`` (the offline
            default) or a path; ``base`` holds ``set_size``, ``seed``, ``fixed_subset``.
        in_dim, out_dim: the sizes of the task's paper data (a dataset from another source records its own).
        classes: fixed class labels in output order (``None``: the data's sorted unique labels).
        pool: Deep Sets pooling for this task; ``set_size``: elements per set the model sees in training
            (``None``: whole sets); ``epochs``: default training length.
        budgets: ``deepsets reproduce`` budgets: ``{"cpu": {TrainConfig field or n_train/n_test: value}}``.
        detect: ``detect(path) -> bool``: does this file or folder hold this task's data?
        build: ``build(options) -> Path`` for ``deepsets data build`` (``options``: source, out, n_train, n_test,
            cells, seed, verify, simulate).
        real_source, offline_default, offline_sizes, built_file: for ``deepsets data list``.
        paper: ``True`` for the paper's six tasks.
        scale_output: regression: start the output layer at the training targets' mean and standard deviation
            (so targets in any units train at the default learning rate); the paper's tasks train as the paper did.
    """

    name: str
    target: str
    description: str
    loader: Callable[..., SetDataset]
    in_dim: int | None = None
    out_dim: int | None = None
    classes: tuple | None = None
    pool: str = "sum"
    set_size: int | None = 1000
    epochs: int = 50
    budgets: Mapping[str, Mapping] = field(default_factory=dict)
    detect: Callable[[Path], bool] | None = None
    build: Callable[..., Path] | None = None
    real_source: str = ""
    offline_default: str = ""
    offline_sizes: str = ""
    built_file: str | None = None
    paper: bool = False
    scale_output: bool = False

    @property
    def target_kind(self) -> Target:
        return get_target(self.target)

    @property
    def metric(self) -> str:
        return self.target_kind.metric

    @property
    def output(self) -> str:
        return self.target_kind.output

    def load(self, split: str = "train", data=None, set_size: int | None = None, seed: int = 0,
             fixed_subset: bool = False, **options) -> SetDataset:
        """The task's sets of ``split`` (see :func:`load_task`)."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if set_size is None:
            set_size = self.set_size
        if set_size == 0:
            set_size = None
        base = {"set_size": set_size, "seed": seed, "fixed_subset": fixed_subset}
        return self.loader(self, split, data, base, dict(options))


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` to :data:`TASKS` (replacing one of the same name) and return it."""
    if not isinstance(task, Task):
        raise TypeError(f"register_task expects a deepsets.data.Task, got {type(task).__name__}")
    get_target(task.target)  # a clear error for an unknown target
    TASKS[task.name] = task
    return task


def list_tasks() -> list[str]:
    return list(TASKS)


def paper_tasks() -> list[str]:
    """The paper's six tasks, in the order ``deepsets data list`` shows them."""
    return [n for n, t in TASKS.items() if t.paper]


def _import_task(spec: str) -> Task:
    """``module:NAME`` or ``path/file.py:NAME`` -> the Task object there (registered on import).

    A file, module or name that does not exist raises ValueError naming it (and the Tasks the module does have).
    """
    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise ValueError(f"task {spec!r}: expected a task name, module:NAME or path/file.py:NAME")
    try:
        if where.endswith(".py"):
            path = Path(where).expanduser().resolve()
            if not path.is_file():
                raise ValueError(f"task {spec!r}: the task file {where} does not exist")
            modname = f"deepsets_user_task_{abs(hash(str(path)))}"
            mod = sys.modules.get(modname)
            if mod is None:
                loader_spec = importlib.util.spec_from_file_location(modname, path)
                mod = importlib.util.module_from_spec(loader_spec)
                sys.modules[modname] = mod
                try:
                    loader_spec.loader.exec_module(mod)
                except BaseException:
                    del sys.modules[modname]  # a failed import is retried, not half-registered
                    raise
        else:
            mod = importlib.import_module(where)
    except ImportError as e:
        hint = " (a file is given as path/file.py:NAME)" if isinstance(e, ModuleNotFoundError) else ""
        raise ValueError(f"task {spec!r}: cannot import {where!r}: {e}{hint}") from None
    obj = getattr(mod, attr, None)
    if not isinstance(obj, Task):
        have = sorted(k for k, v in vars(mod).items() if isinstance(v, Task) and not k.startswith("_"))
        found = f"; Tasks there: {', '.join(have)}" if have else "; it defines no Task"
        what = f"no Task named {attr!r}" if obj is None else f"{attr!r} is a {type(obj).__name__}, not a Task"
        raise ValueError(f"task {spec!r}: {where}: {what}{found}")
    if obj.name != spec:  # checkpoints and configs record the spec, so eval/predict find it again
        from dataclasses import replace

        obj = replace(obj, name=spec)
    return register_task(obj)


def is_code(name) -> bool:
    """Whether ``name`` is a task given as code (``module:NAME`` / ``path/file.py:NAME``) not registered yet."""
    return isinstance(name, str) and ":" in name and name not in TASKS


class UntrustedTaskError(ValueError):
    """A task given as code (``module:NAME`` / ``file.py:NAME``) that was read from a file (a checkpoint, a run's
    ``config.yaml``, a ``--config`` file, a saved model's ``config.json``) rather than named by the user: it is not
    imported. ``spec``: the task; ``where``: what recorded it (``"checkpoint X was trained with"``)."""

    def __init__(self, spec: str, where: str | None = None, python: str = "trust_code=True"):
        self.spec = spec
        what = f"{where} the task {spec!r}, which is code" if where else f"the task {spec!r} is code"
        super().__init__(f"{what}; name it again to run it: --task {spec} (Python: {python})")


def import_task(spec: str) -> Task:
    """The task ``spec``, importing a task given as code (``module:NAME`` / ``path/file.py:NAME``; the object
    ``NAME`` there is a :class:`Task`, registered as ``spec``). This runs that code: call it only with a task you
    named yourself (``--task``), never with a name read from a file."""
    return get_task(spec, trust_code=True)


def get_task(name: str | Task, trust_code: bool = False, where: str | None = None) -> Task:
    """The registered :class:`Task` ``name``; an unknown name raises ValueError listing the valid ones.

    Nothing is imported: a task given as code (``module:NAME`` / ``file.py:NAME``) that is not registered in this
    process raises :class:`UntrustedTaskError` (``where``: what recorded the name, for its message), unless
    ``trust_code=True`` (the caller named the task itself), which imports it (:func:`import_task`).
    """
    if isinstance(name, Task):
        return name
    if isinstance(name, str) and name in TASKS:
        return TASKS[name]
    if is_code(name):
        if trust_code:
            return _import_task(name)
        raise UntrustedTaskError(name, where)
    raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)} (or module:NAME / file.py:NAME "
                     f"for a task of your own)")


def recorded_task(name, where: str, trust_code: bool = False, python: str = "trust_code=True") -> Task | None:
    """The task a file recorded (a checkpoint's, a saved model's): the registered one; a task given as code is
    imported only with ``trust_code`` (else :class:`UntrustedTaskError` naming ``where``); ``None`` for any other
    name (a task of another version or process: the file can still be read)."""
    if isinstance(name, str) and name in TASKS:
        return TASKS[name]
    if is_code(name):
        if trust_code:
            return _import_task(name)
        raise UntrustedTaskError(name, where, python)
    return None


def call_with_options(cls_or_fn, kwargs: dict, task: str):
    """Call with keyword arguments; options the source does not take give a clear ValueError."""
    params = inspect.signature(cls_or_fn).parameters
    accepts_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    allowed = {k for k, p in params.items() if p.kind is not p.VAR_KEYWORD}
    if accepts_kw:
        allowed |= {"set_size", "seed", "fixed_subset"}
    bad = sorted(set(kwargs) - allowed)
    if bad:
        hidden = {"set_size", "seed", "fixed_subset", "split", "task", "target_kind", "out_dim", "expect_dim",
                  "path", "data", "images", "labels", "source"}
        raise ValueError(f"task {task!r}: unknown option(s) {bad} for this source; "
                         f"valid options: {sorted(allowed - hidden)}")
    return cls_or_fn(**kwargs)


def generator_sizes(opts: dict, split: str) -> dict:
    """Generators take one ``n_sets``: the split's ``n_train``/``n_test``; the other split's size is dropped."""
    opts = dict(opts)
    mine, other = ("n_train", "n_test") if split == "train" else ("n_test", "n_train")
    opts.pop(other, None)
    if mine in opts:
        opts["n_sets"] = opts.pop(mine)
    return opts


#: Every option that says how a source of sets is read (tables, .h5ad, FCS folders, .npy/.h5; the command line's
#: source flags), and what it is about: ``layout`` (how the data are laid out: kept from the training run when
#: another file is evaluated or predicted), ``labels`` (where the labels are: kept by eval, not by predict, which
#: reads none) or ``file`` (a file of the training data's own: never kept).
SOURCE_OPTIONS = {
    "set_column": "layout", "label_column": "labels", "labels": "file", "split_column": "labels",
    "features": "layout", "channels": "layout", "channel_map": "layout", "layer": "layout", "no_header": "layout",
    "key": "layout", "label_key": "labels",
}


def source_options(opts: dict) -> dict:
    """``channels`` is the cytometry name of ``features``: one option for every source."""
    opts = dict(opts)
    if "channels" in opts:
        if opts.get("features") is not None and opts["channels"] is not None:
            raise ValueError("give channels or features, not both (they are the same option)")
        ch = opts.pop("channels")
        if ch is not None:
            opts["features"] = ch
    return opts


def reading_options(path, run_options: dict, given: dict, labels: bool = False) -> dict:
    """The source options to read ``path`` (a file other than the training data, or the same) with: ``given``, and
    the training run's ``run_options`` that ``given`` does not set again, where they describe the layout (with
    ``labels``: where the labels are too) and the format of ``path`` takes them. ``channels`` reads as ``features``
    throughout; options that are None are left out."""
    from ..sources import source_options_of

    given = source_options({k: v for k, v in given.items() if v is not None})
    kept = ("layout", "labels") if labels else ("layout",)
    run = source_options({k: v for k, v in run_options.items() if SOURCE_OPTIONS.get(k) in kept and v is not None})
    accepted = source_options_of(path)
    return {**{k: v for k, v in run.items() if k in accepted and k not in given}, **given}


def load_sources(task: Task, split: str, data, base: dict, opts: dict, classes=None, expect_dim=None):
    """A task's sets from any source of :mod:`deepsets.data.sources` (a path, or a reader made in Python)."""
    from ..sources import SetReader, SourceDataset, open_source

    opts = source_options(opts)
    classes = opts.pop("classes", None) or classes
    reader = data if isinstance(data, SetReader) else open_source(data, split, expect_dim=expect_dim, **opts) \
        if expect_dim is not None else open_source(data, split, **opts)
    return SourceDataset(reader, target=task.target, classes=classes, task=task.name, **base)


def load_task(name: str, split: str = "train", data=None, set_size: int | None = None, seed: int = 0,
              fixed_subset: bool = False, **options) -> SetDataset:
    """A :class:`torch.utils.data.Dataset` of ``(x [n_i, D] float32, y)`` for a task and split.

    Args:
        name: a task of :data:`TASKS` (or ``module:NAME`` / ``file.py:NAME``: a task of your own, imported as
            you name it here; see :func:`import_task`).
        split: ``"train"`` or ``"test"``.
        data: ``None`` for the offline default (generated or simulated deterministically), or a path to the real
            format (file, folder, or a list of files for ModelNet40), or any source of
            :mod:`deepsets.data.sources` for the ``regression``/``classification`` tasks. See ``docs/data.md``.
        set_size: subsample sets larger than this (default: the task's ``set_size``; ``0`` disables).
        seed: seed of the subsampling (the subset of set ``i`` is a function of ``(seed, epoch, i)``).
        fixed_subset: one subset per set for all epochs (as the paper's code did) instead of a fresh one.
        **options: source-specific options, e.g. ``n_train``/``n_test``/``elements``/``data_seed`` (generators,
            simulator), ``min_size``/``max_size``/``raw_pixels`` (mnist-var), ``cells`` (simulator),
            ``features``/``channels``, ``set_column``, ``label_column``, ``split_column``, ``labels``, ``layer``,
            ``no_header`` (tables, FCS, h5ad), ``label_key`` (Flow-RBC HDF5), ``num_classes`` (ModelNet),
            ``shapes``/``points`` (offline point clouds), ``classes`` (classification: the class order).

    ``data_seed`` (default 0) fixes the generated data, so different training seeds see the same data set (like
    a real data set); ``seed`` only changes the subsampling.
    """
    return get_task(name, trust_code=True).load(split, data=data, set_size=set_size, seed=seed,
                                                 fixed_subset=fixed_subset, **options)


def detect_task(path) -> str | None:
    """Best guess of the task of a data file or folder (``None`` if unknown)."""
    p = check_exists(path)
    if p.is_file() and p.suffix.lower() in (".h5", ".hdf5", ".hdf"):
        with open_h5(p) as f:
            t = f.attrs.get("deepsets_task")
        if t is not None:
            return t.decode() if isinstance(t, bytes) else str(t)
    for task in TASKS.values():
        if task.detect is not None:
            try:
                if task.detect(p):
                    return task.name
            except DataError:
                raise
    return None


def default_path_hint() -> str:
    import os

    env = os.environ.get("DEEPSETS_DATA")
    return f"$DEEPSETS_DATA ({env})" if env else str(Path("~/.cache/deepsets"))


def h5_shapes(path: Path) -> dict:
    """``{key: shape}`` of the top-level datasets of an HDF5 file (for detectors)."""
    if not (path.is_file() and path.suffix.lower() in (".h5", ".hdf5", ".hdf")):
        return {}
    with open_h5(path) as f:
        return {k: tuple(f[k].shape) for k in f.keys() if hasattr(f[k], "shape")}


def _import_presets() -> None:
    """Import every task file of this package: the paper's six in the paper's order, then any others."""
    import pkgutil

    first = ["normal_var", "mnist_var", "point_cloud", "hematocrit", "anemia", "set_anomaly", "own"]
    found = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    for name in first + [m for m in found if m not in first]:
        importlib.import_module(f"{__name__}.{name}")


_import_presets()
