"""``deepsets grad-norms``: registered by the top-level command (diagnostics may use training, not vice versa)."""
from __future__ import annotations


def add_commands(sub) -> None:
    from ..data import paper_tasks
    from ..models.registry import list_models

    p = sub.add_parser("grad-norms", help="per-layer gradient norms at initialization (CSV, JSON, PNG)")
    p.add_argument("--model", default="deepsets", metavar="MODEL[:DEPTH]",
                   help=f"a registered model ({', '.join(list_models())}), optionally with :DEPTH "
                        f"(default deepsets)")
    p.add_argument("--depth", type=int, help="depth of every model given without :DEPTH (default: its preset's)")
    p.add_argument("--task", default="mnist-var",
                   help=f"the task whose training sets and loss are used: {', '.join(paper_tasks())}, or "
                        f"module:NAME / file.py:NAME (default mnist-var)")
    p.add_argument("--compare", nargs="+", metavar="MODEL[:DEPTH]", help="more models on the same figure")
    p.add_argument("--batch", type=int, default=32, help="sets in the one batch (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="folder for grad_norms.csv, .json and .png")
    p.add_argument("--no-csv-escape", dest="csv_escape", action="store_false",
                   help="write CSV text cells starting with = + - @ as they are (default: a leading ')")
    p.set_defaults(func=_cmd_grad_norms)


def _cmd_grad_norms(args) -> int:
    from ..data import get_task
    from ..models.registry import get_preset
    from .grad_norms import (
        first_last_ratio,
        gradient_norms,
        parse_model_spec,
        write_grad_norms,
    )

    specs = [parse_model_spec(args.model, args.depth)] + [parse_model_spec(s, args.depth) for s in args.compare or []]
    task = get_task(args.task, trust_code=True)  # --task names it; an unknown task or model fails before any data
    # is read
    for name, _ in specs:
        get_preset(name)
    results = {}
    for name, depth in specs:
        rows = gradient_norms(name, depth, task, batch=args.batch, seed=args.seed)
        label = f"{name}" + (f" depth {depth}" if depth else "")
        results[label] = rows
        print(f"{label:<28} layers {len(rows):>3}  first/last gradient norm {first_last_ratio(rows):.3g}")
    paths = write_grad_norms(results, args.out, f"Gradient norms at initialization ({args.task})",
                             escape=args.csv_escape)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
