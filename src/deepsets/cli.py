"""The ``deepsets`` command. Subcommands register themselves through small ``add_*`` functions."""
from __future__ import annotations

import argparse
import importlib
import sys


def _cmd_models(args) -> int:
    from .factory import create_model
    from .models.base import count_parameters
    from .models.registry import get_preset, list_models

    print(f"{'model':<18} {'defaults':<58} {'params (in=out=1)':>17}")
    for name in list_models():
        p = get_preset(name)
        defaults = ", ".join(f"{k}={v}" for k, v in p.defaults.items())
        print(f"{name:<18} {defaults:<58} {count_parameters(create_model(name, 1, 1)):>17,}")
        print(f"{'':<18} {p.description}")
    return 0


def _cmd_smoke(args) -> int:
    """One forward + backward of every model: parameters, output shape, time, gradient reaching layer 1."""
    import time

    import torch

    from .factory import create_model
    from .models.base import count_parameters
    from .models.registry import list_models

    torch.manual_seed(0)
    x = torch.randn(args.batch, args.set_size, 2)
    mask = torch.rand(args.batch, args.set_size) < 0.9
    mask[:, 0] = True
    print(f"forward+backward on {args.batch} sets of up to {args.set_size} elements x 2 features (10% padded)")
    print(f"{'model':<18} {'depth':>5} {'params':>11} {'out':>8} {'ms':>8} {'|grad| first / last layer':>27}")
    for name in list_models():
        model = create_model(name, 2, 1)
        t0 = time.perf_counter()
        y = model(x, mask)
        y.square().mean().backward()
        ms = (time.perf_counter() - t0) * 1e3
        grads = [m.weight.grad.norm().item() for m in model.modules()
                 if isinstance(m, torch.nn.Linear) and m.weight.grad is not None]
        print(f"{name:<18} {model.config.depth:>5} {count_parameters(model):>11,} {str(list(y.shape)):>8} "
              f"{ms:>8.1f} {grads[0] / grads[-1]:>27.3g}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = argparse.ArgumentParser(prog="deepsets", allow_abbrev=False,
                                     description="Deep learning on sets: Deep Sets++, Set Transformer++ and baselines.")
    parser.add_argument("--version", action="version", version=f"deepsets {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list the registered models and their paper defaults")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("smoke", help="one forward/backward pass of every model (a quick installation check)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--set-size", type=int, default=1000)
    p.set_defaults(func=_cmd_smoke)

    for module, fn in _EXTENSIONS:  # each ships with the package (optional libraries are imported by the commands)
        mod = importlib.import_module(f"deepsets.{module}")  # a misspelled module fails here, by name
        add = getattr(mod, fn, None)
        if add is None:
            raise AttributeError(f"deepsets.{module} has no {fn}() to add its subcommands")
        add(sub)
    for p in _all_parsers(parser):
        p.allow_abbrev = False  # a misspelled or shortened flag is an error, never silently another flag
    return parser


def _all_parsers(parser: argparse.ArgumentParser):
    """``parser`` and every subcommand parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sp in dict.fromkeys(action.choices.values()):  # aliases share one parser
                yield from _all_parsers(sp)


def _chosen_parser(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The parser of the (sub)command that ``args`` selected."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and getattr(args, action.dest, None) in action.choices:
            return _chosen_parser(action.choices[getattr(args, action.dest)], args)
    return parser


def _unrecognized(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    """argparse's message for arguments no flag takes, with the nearest flag of this (sub)command for each."""
    import difflib

    flags = [o for o in parser._option_string_actions if o.startswith("--")]
    hints = []
    for arg in extras:
        if arg.startswith("--"):
            name = arg.split("=", 1)[0]
            near = [f for f in flags if f.startswith(name)][:3] or difflib.get_close_matches(name, flags, n=1)
            hints += [f for f in near if f not in hints]
    text = f"unrecognized arguments: {' '.join(extras)}"
    return text + (f" (did you mean {' or '.join(hints)}?)" if hints else "")


# Subcommands that live beside the code they drive: (module, function adding the subparsers).
_EXTENSIONS = [
    ("data.cli", "add_data_commands"),
    ("train.cli", "add_train_commands"),
    ("train.cli", "add_experiment_commands"),
    ("diagnostics.cli", "add_commands"),
    ("demo", "add_demo_command"),
    ("bench", "add_bench_command"),
    ("export", "add_export_command"),
    ("attribution.cli", "add_explain_command"),
]


def _error_message(err: BaseException) -> str:
    """One line for the user: the error's own message (file, set, expected vs found), squeezed onto one line."""
    text = " ".join(line.strip() for line in str(err).strip().splitlines() if line.strip())
    if isinstance(err, KeyError) and len(err.args) == 1:  # str(KeyError) is just the quoted key
        text = f"missing key {err.args[0]!r}"
    if len(text) > 1000:
        text = text[:1000] + " ..."
    # Our own errors already say what went wrong; name the type of anything else (torch, h5py, ...)
    from .files import RunError

    known = (ValueError, FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError, RunError)
    if not isinstance(err, known) or not text:
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text


def _short_usage_errors(parser: argparse.ArgumentParser) -> None:
    """Usage errors as two lines (not the whole usage text), and ``--debug`` accepted after the subcommand too."""

    def error(message, _p=parser):
        _p.exit(2, f"{_p.prog}: error: {message}\n(run {_p.prog} --help for usage)\n")

    parser.error = error
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sp in dict.fromkeys(action.choices.values()):
                if "--debug" not in sp._option_string_actions:
                    sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                    help="show full tracebacks")
                _short_usage_errors(sp)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    _short_usage_errors(parser)
    args, extras = parser.parse_known_args(argv)
    if extras:
        chosen = _chosen_parser(parser, args)
        chosen.error(_unrecognized(chosen, extras))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    command = " ".join(c for c in (getattr(args, "command", None), getattr(args, "data_command", None)) if c)
    from .runtime import tune_allocator
    from .train.guard import terminate_on_sigterm

    tune_allocator()  # reuse freed activation buffers instead of page-faulting fresh ones (see deepsets.runtime)
    restore = terminate_on_sigterm()  # SIGTERM (a scheduler's preemption) unwinds like Ctrl-C: exit code 143
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as err:  # Ctrl-C, or deepsets.train.guard.RunInterrupted (SIGINT/SIGTERM)
        import os

        if int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0:
            print(f"deepsets {command}: {err}" if str(err) else "interrupted", file=sys.stderr)
        return getattr(err, "exit_code", 130)  # the DDP processes Lightning launched stay quiet: rank zero says it
    except (SystemExit, GeneratorExit):
        raise
    except Exception as err:  # noqa: BLE001 - every failure gets a short message; --debug shows the traceback
        if getattr(args, "debug", False):
            raise
        if isinstance(err, MemoryError):
            msg = "out of memory (try a smaller --batch-size or --set-size)"
        else:
            msg = _error_message(err)
        print(f"deepsets {command}: error: {msg}", file=sys.stderr)
        print("(run with --debug for the full traceback)", file=sys.stderr)
        return 1
    finally:
        restore()


if __name__ == "__main__":
    sys.exit(main())
