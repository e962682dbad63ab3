"""``deepsets reproduce table1|table2``: run the grid of ``configs/paper/`` and compare with the paper.

Each YAML under ``configs/paper/TABLE/`` is one table cell (a :class:`TrainConfig` plus the paper's number);
a budget scales data, set size and epochs. Every (cell, seed) run lives in ``OUT/runs/CELL-sSEED/`` and is
skipped when its ``results.json`` exists, so an interrupted reproduction continues where it stopped.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from .config import TrainConfig

# What each budget changes in a cell's config for every task; each task adds its own (``Task.budgets``). Values
# are TrainConfig fields; n_train / n_test (and cells) go to the data generators (offline data only).
BUDGETS: dict[str, dict] = {
    # seconds per cell: checks that every cell runs end to end
    "smoke": dict(epochs=1, max_steps=2, batch_size=8, set_size=16, n_train=24, n_test=8),
    # sized for a 2-core CPU, where the paper's findings already show (on Normal Var the paper's own code shows
    # them at this budget): Adam 1e-4, batch 32, 600 steps; each task sets its set size (100) and data sizes.
    # Minutes per run with one thread: Deep Sets 50 about 2-3, Set Transformer 16 about 6 (MNIST Var: 1500 steps).
    "cpu": dict(batch_size=32, lr=1e-4, max_steps=600),
    # the paper's: Adam 1e-4, batch 64, 50 epochs (30 for hematocrit), full sets (for a GPU)
    "paper": {},
}
DEFAULT_SEEDS = {"smoke": [0], "cpu": [0, 1, 2], "paper": [0, 1, 2]}
GENERATOR_OPTIONS = ("n_train", "n_test", "cells")


def task_budget(task: str, budget: str) -> dict:
    """The budget's settings for one task: the common ones, then the task's own."""
    from ..data import get_task

    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; valid: {', '.join(BUDGETS)}")
    return {**BUDGETS[budget], **get_task(task).budgets.get(budget, {})}


def config_root() -> Path:
    """The paper's table configs: ``deepsets/configs/paper`` inside the installed package."""
    from importlib.resources import files

    p = Path(str(files("deepsets") / "configs" / "paper"))
    if not p.is_dir():  # pragma: no cover - a broken installation
        raise FileNotFoundError(f"the paper's configs are missing from the installed package ({p}); reinstall deepsets")
    return p


def cell_files(table: str, tasks: list[str] | None = None, cells: list[str] | None = None) -> list[Path]:
    """The table's cell configs (of ``tasks`` only, and of cells whose name matches a glob of ``cells``)."""
    folder = config_root() / table
    if not folder.is_dir():
        valid = sorted(p.name for p in config_root().iterdir() if p.is_dir())
        raise ValueError(f"unknown table {table!r}; valid: {', '.join(valid)}")
    cfgs = {f: TrainConfig.load(f) for f in folder.glob("*.yaml")}
    if tasks:
        from ..data import get_task

        for t in tasks:
            get_task(t)  # clear error for an unknown task
        cfgs = {f: c for f, c in cfgs.items() if c.task in tasks}
    if cells:
        from fnmatch import fnmatch

        cfgs = {f: c for f, c in cfgs.items() if any(fnmatch(f.stem, g) for g in cells)}
    return sorted(cfgs, key=lambda f: paper_order(cfgs[f]))


MODEL_ORDER = ["deepsets", "deepsets++", "settransformer", "settransformer++"]
TASK_ORDER = ["hematocrit", "point-cloud", "mnist-var", "normal-var", "set-anomaly", "anemia"]


def paper_order(cfg: TrainConfig) -> tuple:
    """Rows and columns in the order the paper prints them."""
    def idx(seq, v):
        return seq.index(v) if v in seq else len(seq)

    family = 0 if cfg.model.startswith("deepsets") else 1
    return (family, idx(MODEL_ORDER, cfg.model), cfg.depth or 0, idx(["nonclean", "clean"], cfg.residual),
            idx(["layer", "feature", "set", "none"], cfg.norm), idx(TASK_ORDER, cfg.task))


def budget_config(path: Path, budget: str, seed: int, out: Path) -> TrainConfig:
    cfg = TrainConfig.load(path)
    b = task_budget(cfg.task, budget)
    opts = {k: b.pop(k) for k in GENERATOR_OPTIONS if k in b}
    if cfg.data is None:  # generator sizes only apply to the offline data
        cfg.task_options = {**cfg.task_options, **opts}
    for k, v in b.items():
        setattr(cfg, k, v)
    cfg.seed, cfg.progress = seed, False
    cfg.out = str(out / "runs" / f"{path.stem}-s{seed}")
    return cfg


def cell_result(cfg: TrainConfig) -> dict | None:
    """The cached result of a (cell, seed) run (its ``results.json``), or None if it has not finished."""
    done = Path(cfg.out) / "results.json"
    return json.loads(done.read_text()) if done.is_file() else None


def run_cell(cfg: TrainConfig) -> dict:
    """Train one (cell, seed) and evaluate its best checkpoint on the test split; cached in results.json."""
    from ..files import write_json
    from .evaluation import evaluate
    from .fit import train

    done = Path(cfg.out) / "results.json"
    if done.is_file():
        return json.loads(done.read_text())
    resume = (Path(cfg.out) / "checkpoints" / "last.ckpt").is_file()
    t0 = time.time()
    summary = train(cfg, resume=resume, overwrite=not resume, trust_code=False)  # the package's configs
    result = evaluate(Path(cfg.out) / "checkpoints" / "best.ckpt")
    result.update({"train_seconds": round(time.time() - t0, 1), "steps": summary["steps"],
                   "epochs": summary["epochs_done"], "paper": cfg.paper, "seed": cfg.seed})
    write_json(done, result)
    return result


def reported_value(result: dict) -> float:
    """Table 1 reports the test loss; Table 2 the test metric (MSE or accuracy)."""
    if result["paper"].get("reported") == "test loss":
        return result["loss"]
    return result["mse"] if "mse" in result else result["accuracy"]


def mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, float("nan")
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)


def results_markdown(table: str, budget: str, results: list[dict], command: str) -> str:
    cells: dict[tuple, list[dict]] = {}
    for r in results:
        cells.setdefault((r["paper"]["row"], r["paper"]["column"]), []).append(r)
    rows = list(dict.fromkeys(k[0] for k in cells))
    cols = list(dict.fromkeys(k[1] for k in cells))
    lines = [f"# Reproduction of the paper's {table.replace('table', 'Table ')} ({budget} budget)", "",
             f"Command: `{command}`", "",
             "Each cell: this project's test value, mean +- standard error over seeds (n = seeds), then the paper's "
             "number in parentheses. " + ("Test loss (Table 1)." if table == "table1" else
                                         "Test metric: MSE for regression, accuracy for classification (Table 2)."),
             ""]
    metrics = {c: cells[next(k for k in cells if k[1] == c)][0]["paper"]["metric"] for c in cols}
    head = ["family", "residual", "norm"] if table == "table1" else ["model", "layers"]
    lines.append("| " + " | ".join(head) + " | " + " | ".join(f"{c} ({metrics[c]})" for c in cols) + " |")
    lines.append("|" + "---|" * (len(head) + len(cols)))
    for row in rows:
        out = []
        for c in cols:
            rs = cells.get((row, c))
            if not rs:
                out.append("")
                continue
            m, se = mean_se([reported_value(r) for r in rs])
            paper = rs[0]["paper"].get("value")
            se_s = "" if math.isnan(se) else f" +- {se:.4f}"
            out.append(f"{m:.4f}{se_s} (n={len(rs)}; paper {paper if paper is not None else 'n/a'})")
        lines.append(f"| {row} | " + " | ".join(out) + " |")
    extra = sorted({(r["task"], round(r.get("label_variance", float('nan')), 4)) for r in results
                    if "label_variance" in r})
    if extra:
        lines += ["", "Predicting the test labels' mean gives MSE: " +
                  ", ".join(f"{t} {v}" for t, v in extra) + "."]
    secs = sum(r.get("train_seconds", 0) for r in results)
    lines += ["", f"Total training + evaluation time: {secs / 60:.1f} min over {len(results)} runs."]
    return "\n".join(lines) + "\n"


def reproduce(table: str, budget: str = "smoke", tasks: list[str] | None = None, seeds: list[int] | None = None,
              out: str | Path | None = None, command: str = "", echo=print, executor: str | None = None,
              parallel: int = 2, slurm=None, cells: list[str] | None = None) -> Path:
    """Run every (cell, seed) of ``table`` and write ``OUT/results.md`` beside the paper's numbers.

    ``executor``: ``None`` runs the cells here, one after another; ``"local"`` / ``"slurm"`` runs one submitit
    job per (cell, seed), ``parallel`` at a time (see :mod:`deepsets.train.executors`; ``slurm``: a
    :class:`~deepsets.train.executors.SlurmOptions`). Either way finished cells are skipped when the command runs
    again, and the table is rewritten after every finished run.
    """
    from .executors import run_jobs
    from ..files import atomic_write_text

    out = Path(out or Path("runs") / f"reproduce-{table}-{budget}")
    out.mkdir(parents=True, exist_ok=True)
    seeds = seeds if seeds else DEFAULT_SEEDS[budget]
    files = cell_files(table, tasks, cells)
    if not files:
        raise ValueError(f"no cells of {table} for tasks {tasks} and cells {cells}")
    jobs = [(f, s) for s in seeds for f in files]  # seed-major: an interrupted run still covers every cell
    configs = [budget_config(f, budget, s, out) for f, s in jobs]
    done: dict[int, dict] = {}
    t0 = time.time()
    command = command or f"deepsets reproduce {table} --budget {budget}"
    for i, r in run_jobs(run_cell, [(c,) for c in configs], executor, out / "jobs", parallel, slurm,
                         cached=cell_result):
        done[i] = r
        (f, s), cfg = jobs[i], configs[i]
        echo(f"[{len(done)}/{len(jobs)}] {f.stem} seed {s}: {reported_value(r):.4f} "
             f"(paper {cfg.paper.get('value')}) [{(time.time() - t0) / 60:.1f} min]")
        # the table so far, after every run: an interrupted reproduction still leaves its results
        results = [done[k] for k in sorted(done)]
        md = results_markdown(table, budget, results, command)
        if len(done) < len(jobs):
            md += f"\n(Partial: {len(done)} of {len(jobs)} runs finished; rerun the command to continue.)\n"
        atomic_write_text(out / "results.md", md)
        atomic_write_text(out / "results.json", json.dumps(results, indent=1))
    if table == "table2" and done:
        depth_figure(list(done.values()), out / "depth.png", f"{table}, {budget} budget")
    return out / "results.md"


def depth_figure(results: list[dict], path: Path, title: str = "") -> bool:
    """Table 2 as a picture: test metric against depth per task and family (False without matplotlib)."""
    from .plots import plot_depth

    cells: dict[tuple, list[float]] = {}
    paper: dict[tuple, float | None] = {}
    metrics: dict[str, str] = {}
    mean_predictor: dict[str, float] = {}
    for r in results:
        key = (r["task"], r["model"], r["depth"])
        cells.setdefault(key, []).append(reported_value(r))
        paper[key] = r["paper"].get("value")
        metrics[r["task"]] = r["paper"].get("metric", "")
        if "label_variance" in r:
            mean_predictor[r["task"]] = r["label_variance"]
    try:
        plot_depth(cells, paper, metrics, path, title, mean_predictor)
    except ImportError:  # matplotlib is optional (the plot extra)
        return False
    return True
