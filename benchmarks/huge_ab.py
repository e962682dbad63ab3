"""The huge-set fast path of a git revision against the working tree's, on the same set in one process.

Usage: PYTHONPATH=src python benchmarks/huge_ab.py REV [--model settransformer++:16] [--n 200000] [--repeats 3]

The revision's ``deepsets/backends/huge.py`` is loaded beside the current one (``git show REV:...``); both run
``{deepsets,settransformer}_forward`` on one random set, interleaved, best of ``--repeats``; the ratio to the
model's matrix products at the ``torch.mm`` rate (measured in the same loop) is printed for each.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from huge_sets import H, products  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rev")
    ap.add_argument("--model", default="settransformer++:16")
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    import deepsets
    from deepsets.backends import huge

    src = subprocess.run(["git", "show", f"{a.rev}:src/deepsets/backends/huge.py"], capture_output=True, text=True,
                         check=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "huge_old.py"
        f.write_text(src)
        spec = importlib.util.spec_from_file_location("deepsets.backends._huge_rev", f)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
    name, depth = a.model.split(":")
    fn = "deepsets_forward" if name.startswith("deepsets") else "settransformer_forward"
    torch.manual_seed(0)
    model = deepsets.create_model(name, 2, 1, depth=int(depth), dim=H).eval()
    x = torch.randn(a.n, 2) * torch.tensor([15.0, 3.0]) + torch.tensor([90.0, 30.0])
    w, mat = torch.randn(H, H), torch.randn(a.n, H)
    out = torch.empty(a.n, H)
    best = {"rev": float("inf"), "now": float("inf"), "mm": float("inf")}
    with torch.no_grad():
        torch.mm(mat, w, out=out)  # the output buffer's pages are touched before timing
        for _ in range(a.repeats):
            for key, run in (("mm", lambda: torch.mm(mat, w, out=out)), ("rev", lambda: getattr(old, fn)(model, x)),
                             ("now", lambda: getattr(huge, fn)(model, x))):
                t0 = time.perf_counter()
                y = run()
                best[key] = min(best[key], time.perf_counter() - t0)
                if key != "mm":
                    best[key + "_out"] = float(y.flatten()[0])
    ref = best["mm"] * products(name, int(depth))
    print(f"{a.model}, n = {a.n}, best of {a.repeats}: matmul-rate forward {ref:.2f} s")
    for key, label in (("rev", a.rev), ("now", "working tree")):
        print(f"  {label}: {best[key]:.2f} s ({best[key] / ref:.2f}x), output {best[key + '_out']:.6g}")


if __name__ == "__main__":
    main()
