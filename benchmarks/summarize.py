"""Summarize repeated runs of benchmarks/cpu.sh: median and range per configuration, as Markdown.

Usage: python benchmarks/summarize.py benchmarks/cpu-results.jsonl
(the file may hold several runs of the script one after another; lines with the same environment, model,
depth and masking are repetitions of one configuration).
"""
import json
import statistics
import sys
from collections import defaultdict


def main(path: str) -> None:
    groups = defaultdict(list)
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                groups[(r.get("env", ""), r["model"], r["depth"], r["masked"])].append(r)
    print("| env | model | depth | sets | runs | step ms | ratio (median, range) | padded cost per valid element |")
    print("|---|---|---|---|---|---|---|---|")
    for (env, model, depth, masked), rs in groups.items():
        ratios = [r["ratio"] for r in rs]
        step = statistics.median(r["step_ms"] for r in rs)
        padded = [r["padded_cost_per_valid_element"] for r in rs if "padded_cost_per_valid_element" in r]
        pc = (f"{statistics.median(padded):.2f}x ({min(padded):.2f}-{max(padded):.2f})" if padded else "")
        env = "" if env == "X=1" else f"`{env}`"
        print(f"| {env} | {model} | {depth} | {'padded, 500-1000' if masked else 'full, 1000'} | {len(rs)} | "
              f"{step:.0f} | {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) | {pc} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/cpu-results.jsonl")
