"""One block forward + backward: op by op vs the layer-level kernels, and the block's matrix products alone.

Usage: python benchmarks/block_kernels.py [--repeats 30]
Interleaved in one process (the path is switched with DEEPSETS_KERNELS between calls), batch 8, sets of 1000,
width 128, fp32, allocator tuned as in `deepsets bench`. Prints a table and one JSON line per block:
medians in ms of
  per_op    the block with the set-norm kernels only (DEEPSETS_KERNELS=norm),
  fused     the block on the layer-level kernels (the default),
  products  the block's matrix products alone, each one torch.mm over all 8,000 rows (what `deepsets bench`
            replays as the machine's matmul speed; attention products excluded for the ISAB).
"""
import argparse
import json
import os
import statistics
import time

import torch

from deepsets import backends
from deepsets.nn import ISAB, DeepSetsBlock, SetNorm, SetSequential
from deepsets.runtime import tune_allocator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    tune_allocator()
    torch.manual_seed(0)
    B, N, D = 8, 1000, 128
    x = torch.randn(B, N, D, requires_grad=True)
    g = torch.randn(B, N, D)
    a, w = torch.randn(B * N, D), torch.randn(D, D)
    w2 = torch.randn(2 * D, D)
    gw = torch.randn(B * N, 2 * D)

    def step(block):
        def run():
            block.zero_grad(set_to_none=True)
            x.grad = None
            block(x).backward(g)
        return run

    def products(widths):  # forward y = a w^T, backward g^T a and g w, for each layer of the given output widths
        def run():
            for n in widths:
                wt, gt = (w, g.view(-1, D)) if n == D else (w2, gw)
                torch.mm(a, wt.t())
                torch.mm(gt.t(), a)
                torch.mm(gt, wt)
        return run

    blocks = {
        # one block as a stack of one, on the CPU backend (what create_model builds)
        "deepsets++ block (2 layers)": (backends.apply(SetSequential([DeepSetsBlock(D, SetNorm)])), [D, D]),
        "settransformer++ ISAB (32 inducing points)": (
            backends.apply(SetSequential([ISAB(D, D, 4, 32, SetNorm, "clean")])), [2 * D, D, D]),
    }
    print("| block | op by op (ms) | fused (ms) | its element-wide products alone (ms) |")
    print("|---|---|---|---|")
    for name, (block, widths) in blocks.items():
        runs = {"per_op": ("norm", step(block)), "fused": ("1", step(block)), "products": ("1", products(widths))}
        times = {k: [] for k in runs}
        for i in range(args.repeats + 3):
            for k, (env, fn) in runs.items():
                os.environ["DEEPSETS_KERNELS"] = env
                t0 = time.perf_counter()
                fn()
                if i >= 3:
                    times[k].append((time.perf_counter() - t0) * 1e3)
        os.environ["DEEPSETS_KERNELS"] = "1"
        med = {k: round(statistics.median(v), 2) for k, v in times.items()}
        print(f"| {name} | {med['per_op']} | {med['fused']} | {med['products']} |")
        print(json.dumps({"block": name, "repeats": args.repeats, "torch": torch.__version__,
                          "threads": torch.get_num_threads(), **med}))


if __name__ == "__main__":
    main()
