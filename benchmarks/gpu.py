"""GPU checks and benchmarks in one process (``bash benchmarks/gpu.sh`` runs it; about 5 minutes on one H100).

1. Correctness on the GPU: every model (Deep Sets, Deep Sets++, Set Transformer, Set Transformer++), every norm
   they take, unpadded and padded batches: CUDA float64 outputs and parameter gradients against the CPU float64
   computation; chunked inference on CUDA against the unchunked output.
2. Exact chunked inference on one set of 10^6 elements (peak GPU memory, time).
3. ``deepsets bench`` configurations at batches 8 and 64: fp32, bf16-mixed, padded sets, then bf16-mixed +
   ``torch.compile(mode="reduce-overhead")`` (CUDA graphs) at batch 8; ``--full`` adds more.

Each result is one JSON line, written to ``--out`` as soon as it exists (a run cut short keeps what it had).
Usage: ``python benchmarks/gpu.py [--out FILE] [--quick]`` (``--quick``: small shapes, any device, for a dry run).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback

import torch

import deepsets
from deepsets.bench import bench
from deepsets.models import chunked_forward


def emit(out, record: dict) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    out.write(line + "\n")
    out.flush()


def _grads(model):
    return [p.grad.detach().cpu().clone() for p in model.parameters() if p.grad is not None]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def check_model(name: str, norm: str, device: str, masked: bool, depth: int = 4) -> dict:
    """Forward and parameter gradients on ``device`` vs CPU, float64, same weights and batch."""
    torch.manual_seed(0)
    cpu = deepsets.create_model(name, 3, 2, depth=depth, norm=norm).double()
    dev = deepsets.create_model(name, 3, 2, depth=depth, norm=norm).double()
    dev.load_state_dict(cpu.state_dict())
    dev = dev.to(device)
    x = torch.randn(4, 50, 3, dtype=torch.float64) * 3 + 1
    mask = None
    if masked:
        sizes = torch.tensor([50, 17, 1, 33])
        mask = torch.arange(50)[None, :] < sizes[:, None]
    results = {}
    outs = []
    for model, dv in ((cpu, "cpu"), (dev, device)):
        xb = x.to(dv)
        out = model(xb, None if mask is None else mask.to(dv))
        (out.pow(2).sum() + out.sum()).backward()
        outs.append((out.detach().cpu(), _grads(model)))
    (o_cpu, g_cpu), (o_dev, g_dev) = outs
    results["out_rel"] = _rel(o_dev, o_cpu)
    # Per parameter, relative to its own largest gradient, or to 1e-6 of the model's largest where a gradient is
    # exactly zero in theory (e.g. queries attending to a single pooled element) and only rounding noise remains.
    scale = max(float(g.abs().max()) for g in g_cpu) if g_cpu else 0.0
    results["grad_rel"] = max((float((a - b).abs().max()) / max(float(b.abs().max()), 1e-6 * scale, 1e-30)
                               for a, b in zip(g_dev, g_cpu)), default=0.0)
    results["grads"] = f"{len(g_dev)}/{len(g_cpu)}"
    dev.eval()  # chunked inference uses running statistics where a norm keeps them
    with torch.no_grad():
        full = dev(x.to(device), None if mask is None else mask.to(device)).cpu()
        chunk = chunked_forward(dev, x.to(device), None if mask is None else mask.to(device), chunk_size=7).cpu()
    results["chunked_rel"] = _rel(chunk, full)
    ok = max(results["out_rel"], results["grad_rel"], results["chunked_rel"]) <= 1e-9 \
        and len(g_dev) == len(g_cpu)
    return {"check": name, "norm": norm, "masked": masked, "device": device, **results, "ok": ok}


NORMS = {"deepsets": ["none", "layer", "set", "feature"], "deepsets++": ["set", "layer", "feature"],
         "settransformer": ["none", "layer", "set"], "settransformer++": ["set", "layer"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/gpu-results.jsonl")
    ap.add_argument("--quick", action="store_true", help="small shapes on any device (dry run)")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: checks,bench,chunked")
    ap.add_argument("--full", action="store_true", help="also fp32 at batch 64 and compiled runs in the default "
                    "mode at batches 8 and 64 (about 4 more minutes)")
    ap.add_argument("--match", default="", help="only bench runs whose settings contain all these comma-separated "
                    "words, e.g. settransformer++,reduce-overhead")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    skip = set(filter(None, args.skip.split(",")))
    failures = 0
    with open(args.out, "w") as out:
        info = {"torch": torch.__version__, "device": device, "deepsets": deepsets.__version__,
                "date": time.strftime("%Y-%m-%d")}
        if device == "cuda":
            p = torch.cuda.get_device_properties(0)
            info.update(gpu=p.name, gpu_memory_gb=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count)
        emit(out, {"info": info})

        if "checks" not in skip:
            for name, norms in NORMS.items():
                for norm in norms:
                    for masked in (False, True):
                        try:
                            r = check_model(name, norm, device, masked)
                        except Exception as e:  # report and go on: one failure must not hide the others
                            r = {"check": name, "norm": norm, "masked": masked, "ok": False,
                                 "error": f"{type(e).__name__}: {e}"}
                        failures += not r["ok"]
                        emit(out, r)

        if "chunked" not in skip:
            n = 20_000 if args.quick else 1_000_000
            for name, depth in (("deepsets++", 50), ("settransformer++", 16)):
                model = deepsets.create_model(name, 2, 1, depth=depth).to(device).eval()
                x = torch.randn(1, n, 2, device=device)
                if device == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    torch.cuda.synchronize()
                t0 = time.time()
                with torch.no_grad():
                    y = chunked_forward(model, x, chunk_size=262_144)
                if device == "cuda":
                    torch.cuda.synchronize()
                r = {"chunked_inference": name, "depth": depth, "elements": n, "seconds": round(time.time() - t0, 2)}
                if device == "cuda":
                    r["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
                    torch.cuda.reset_peak_memory_stats()
                try:  # the unchunked computation, where it fits, for the difference and its memory
                    with torch.no_grad():
                        full = model(x)
                    r["rel_diff_vs_unchunked"] = _rel(y.cpu(), full.cpu())
                    if device == "cuda":
                        r["unchunked_peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
                except torch.OutOfMemoryError:
                    r["unchunked"] = "out of memory"
                del x, y
                emit(out, r)
        if "bench" not in skip:
            models = [("deepsets++", 50), ("settransformer++", 16)]
            runs = []  # eager runs first, compiled ones last (compilation takes most of the time)
            for name, depth in models:
                for batch in (8, 64):
                    if batch == 8 or args.full:
                        runs.append(dict(model_name=name, depth=depth, batch=batch, precision="32"))
                    runs += [dict(model_name=name, depth=depth, batch=batch, precision="bf16-mixed"),
                             dict(model_name=name, depth=depth, batch=batch, precision="bf16-mixed", masked=True)]
            compiled = [(8, "reduce-overhead")] + ([(8, "default"), (64, "default")] if args.full else [])
            for name, depth in models:
                for batch, mode in compiled:
                    runs.append(dict(model_name=name, depth=depth, batch=batch, precision="bf16-mixed", compile=mode))
            words = [w for w in args.match.split(",") if w]
            runs = [kw for kw in runs if all(w in json.dumps(kw) for w in words)]
            for kw in runs:
                if args.quick:
                    kw.update(depth=3, batch=2, set_size=64, repeats=2, warmup=1)
                t0 = time.time()
                try:
                    r = bench(device=device, **kw)
                except Exception as e:
                    traceback.print_exc()
                    r = {"bench": kw, "error": f"{type(e).__name__}: {e}"}
                    failures += 1
                r["wall_s"] = round(time.time() - t0, 1)
                emit(out, r)
                torch._dynamo.reset()

    print(f"{failures} failure(s)", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
