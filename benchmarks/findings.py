"""The paper's three findings, checked on the finished runs of ``benchmarks/reproduce_cpu.sh``.

Usage: python benchmarks/findings.py [--root benchmarks/reproduce] [--budget cpu] [--out benchmarks/findings-cpu.md]
                                    [--tables benchmarks] [--figure docs/depth-cpu.png]

Reads every ``ROOT/TABLE-BUDGET/runs/CELL-sSEED/results.json`` (one finished run each) and writes, per finding,
the cells it compares: test value mean +- standard error over seeds, the seeds, the paper's number, and whether
the ordering the paper reports holds here. "separated" means the two means differ by more than twice the
standard error of their difference (Welch); with 3 seeds that is a rough screen, not a test.

1. Without the paper's changes, deep models degrade: Deep Sets at 50 layers vs 3 (Table 2), Set Transformer at
   16 layers vs 2; the "++" models at the same depths for contrast.
2. Clean-path residuals beat non-clean ones (Table 1: clean vs non-clean, per family and norm).
3. Set norm beats layer norm (Table 1: set vs layer, per family and residual).

``--tables DIR`` also writes both tables from the same runs (``DIR/table1-BUDGET-results.md``, ``table2-...``,
in the paper's row order, by the package's own ``results_markdown``), whatever subset of tasks each reproduce
command ran; ``--figure PATH`` draws Table 2's test error against depth.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

LOWER_IS_BETTER = {"MSE": True, "CE": True, "accuracy": False}


def load(root: Path, table: str, budget: str) -> dict[tuple[str, str], list[dict]]:
    """``{(row, column): [result, ...]}`` of the finished runs of one table."""
    cells: dict[tuple[str, str], list[dict]] = {}
    for f in sorted((root / f"{table}-{budget}" / "runs").glob("*/results.json")):
        r = json.loads(f.read_text())
        cells.setdefault((r["paper"]["row"], r["paper"]["column"]), []).append(r)
    return cells


def value(r: dict) -> float:
    if r["paper"].get("reported") == "test loss":
        return r["loss"]
    return r["mse"] if "mse" in r else r["accuracy"]


def stats(rs: list[dict]) -> tuple[float, float, list[int]]:
    v = [value(r) for r in rs]
    m = sum(v) / len(v)
    se = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v)) if len(v) > 1 else float("nan")
    return m, se, sorted(r["seed"] for r in rs)


def fmt(rs: list[dict] | None) -> str:
    if not rs:
        return "not run yet"
    m, se, seeds = stats(rs)
    paper = rs[0]["paper"].get("value")
    se_s = "" if math.isnan(se) else f" +- {se:.3g}"
    return f"{m:.4g}{se_s} (seeds {','.join(map(str, seeds))}; paper {paper if paper is not None else 'n/a'})"


def compare(better: list[dict] | None, worse: list[dict] | None) -> str:
    """Does ``better`` beat ``worse`` as the paper says?"""
    if not better or not worse:
        return "incomplete"
    metric = better[0]["paper"]["metric"]
    (mb, sb, _), (mw, sw, _) = stats(better), stats(worse)
    sign = 1 if LOWER_IS_BETTER.get(metric, True) else -1
    holds = sign * (mw - mb) > 0
    if math.isnan(sb) or math.isnan(sw):
        return ("holds" if holds else "reversed") + ", one seed (no error estimate)"
    sep = abs(mw - mb) > 2 * math.sqrt(sb ** 2 + sw ** 2)
    return ("holds" if holds else "reversed") + (", separated" if sep else ", within noise")


def finding_rows(t1, t2) -> list[tuple[str, str, str, str, str]]:
    """(finding, column, expected better: value, expected worse: value, verdict)."""
    rows = []
    for col in sorted({c for _, c in t2}, key=["hematocrit", "point-cloud", "mnist-var", "normal-var"].index):
        for fam, shallow, deep in (("Deep Sets", 3, 50), ("Set Transformer", 2, 16)):
            b, w = t2.get((f"{fam} | {shallow}", col)), t2.get((f"{fam} | {deep}", col))
            rows.append(("1: depth hurts the baselines", col, f"{fam} {shallow}: {fmt(b)}", f"{fam} {deep}: {fmt(w)}",
                         compare(b, w)))
            b, w = t2.get((f"{fam}++ | {deep}", col)), t2.get((f"{fam} | {deep}", col))
            rows.append(("1: ... and not the ++ models", col, f"{fam}++ {deep}: {fmt(b)}", f"{fam} {deep}: {fmt(w)}",
                         compare(b, w)))
    cols = sorted({c for _, c in t1})
    for col in cols:
        for fam in ("Deep Sets", "Set Transformer"):
            for norm in ("layer", "feature", "set"):
                b, w = t1.get((f"{fam} | clean | {norm}", col)), t1.get((f"{fam} | non-clean | {norm}", col))
                rows.append(("2: clean beats non-clean", col, f"{fam} clean {norm}: {fmt(b)}",
                             f"{fam} non-clean {norm}: {fmt(w)}", compare(b, w)))
    for col in cols:
        for fam in ("Deep Sets", "Set Transformer"):
            for res in ("clean", "non-clean"):
                b, w = t1.get((f"{fam} | {res} | set", col)), t1.get((f"{fam} | {res} | layer", col))
                rows.append(("3: set norm beats layer norm", col, f"{fam} {res} set: {fmt(b)}",
                             f"{fam} {res} layer: {fmt(w)}", compare(b, w)))
    return rows


def table_results(root: Path, table: str, budget: str) -> list[dict]:
    """Every finished run of ``table``, ordered as the paper prints it (cell, then seed)."""
    from deepsets.train.reproduce import cell_files

    order = {f.stem: i for i, f in enumerate(cell_files(table))}
    runs = []
    for f in (root / f"{table}-{budget}" / "runs").glob("*/results.json"):
        cell, _, seed = f.parent.name.rpartition("-s")
        runs.append((order.get(cell, len(order)), int(seed), json.loads(f.read_text())))
    return [r for *_, r in sorted(runs, key=lambda t: t[:2])]


def write_tables(root: Path, budget: str, out_dir: Path | None, figure: Path | None) -> None:
    from deepsets.train.reproduce import depth_figure, results_markdown

    for table in ("table1", "table2"):
        results = table_results(root, table, budget)
        if not results:
            continue
        if out_dir is not None:
            cmd = f"bash benchmarks/reproduce_cpu.sh (deepsets reproduce {table} --budget {budget} --executor local)"
            md = results_markdown(table, budget, results, cmd)
            (out_dir / f"{table}-{budget}-results.md").write_text(md)
            print(f"wrote {out_dir / f'{table}-{budget}-results.md'} ({len(results)} runs)")
        if table == "table2" and figure is not None:
            depth_figure(results, figure, f"Table 2, {budget} budget ({len(results)} runs)")
            print(f"wrote {figure}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="benchmarks/reproduce")
    ap.add_argument("--budget", default="cpu")
    ap.add_argument("--out", default=None, help="also write the markdown here")
    ap.add_argument("--tables", default=None, help="also write TABLE-BUDGET-results.md of both tables here")
    ap.add_argument("--figure", default=None, help="also draw Table 2's test error against depth here")
    a = ap.parse_args()
    root = Path(a.root)
    t1, t2 = load(root, "table1", a.budget), load(root, "table2", a.budget)
    n1, n2 = sum(map(len, t1.values())), sum(map(len, t2.values()))
    lines = [f"# The paper's findings at the {a.budget} budget", "",
             f"From the finished runs under `{root}/` ({n1} of Table 1, {n2} of Table 2), by "
             f"`python benchmarks/findings.py`. Test loss (Table 1) or test metric (Table 2): mean +- standard error "
             "over seeds. \"separated\": the means differ by more than twice the standard error of the difference.",
             "", "| finding | task | should be better | should be worse | here |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(r)} |" for r in finding_rows(t1, t2)]
    verdicts = {}
    for r in finding_rows(t1, t2):
        verdicts.setdefault(r[0], []).append(r[4])
    lines += ["", "Summary (comparisons with both cells run):", ""]
    for k, v in verdicts.items():
        done = [x for x in v if x != "incomplete"]
        lines.append(f"- {k}: {sum(x.startswith('holds') for x in done)} of {len(done)} hold "
                     f"({sum(x == 'holds, separated' for x in done)} separated), "
                     f"{sum(x.startswith('reversed') for x in done)} reversed "
                     f"({sum(x == 'reversed, separated' for x in done)} separated); {len(v) - len(done)} not run yet")
    md = "\n".join(lines) + "\n"
    print(md)
    if a.out:
        Path(a.out).write_text(md)
    if a.tables or a.figure:
        write_tables(root, a.budget, Path(a.tables) if a.tables else None, Path(a.figure) if a.figure else None)


if __name__ == "__main__":
    main()
