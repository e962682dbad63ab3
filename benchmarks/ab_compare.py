"""Before/after table of interleaved `deepsets bench` runs.

Usage: python benchmarks/ab_compare.py AB.jsonl
Each line is one `deepsets bench --json` object (a line of benchmarks/cpu.sh's output) with ``side`` ("before" or
"after") and ``round`` added; the table gives, per configuration, the median step time of each side over its rounds
(with the range), their quotient and the median ratio to the machine's matmul rate.
"""
import json
import statistics
import sys


def main(path: str) -> None:
    groups: dict = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                groups.setdefault((r["model"], r["depth"], r["masked"]), []).append(r)
    print("| model | depth | sets | step ms before: median (range) | step ms after: median (range) | after / before "
          "| ratio before | ratio after |")
    print("|---|---|---|---|---|---|---|---|")
    for (model, depth, masked), rs in groups.items():
        side = {s: [r for r in rs if r["side"] == s] for s in ("before", "after")}
        step = {s: statistics.median(r["step_ms"] for r in v) for s, v in side.items()}
        span = {s: f"{min(r['step_ms'] for r in v):.0f}-{max(r['step_ms'] for r in v):.0f}" for s, v in side.items()}
        ratio = {s: statistics.median(r["ratio"] for r in v) for s, v in side.items()}
        print(f"| {model} | {depth} | {'padded, 500-1000' if masked else 'full, 1000'} | {step['before']:.0f} "
              f"({span['before']}) | {step['after']:.0f} ({span['after']}) | {step['after'] / step['before']:.3f} | "
              f"{ratio['before']:.2f} | {ratio['after']:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1])
