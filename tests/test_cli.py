"""The command line: flags built from TrainConfig's fields, and misspelled flags, values, tasks and config keys
failing with a message that names the bad value and the valid ones."""
import argparse
from pathlib import Path

import pytest

from deepsets.cli import build_parser, main
from deepsets.train.cli import config_from_args
from deepsets.train.config import TrainConfig, flag_fields

ROOT = Path(__file__).resolve().parents[1]

# Every flag `train` had before its flags were built from TrainConfig: none may disappear or change its name.
TRAIN_FLAGS = ["--config", "--task", "--target", "--model", "--depth", "--dim", "--norm", "--residual", "--pool",
               "--epochs", "--max-steps", "--batch-size", "--set-size", "--lr", "--seed", "--grad-clip", "--data",
               "--set-column", "--label-column", "--labels", "--split-column", "--features", "--channels",
               "--channel-map", "--layer", "--no-header", "--n-train", "--n-test", "--fixed-subset",
               "--eval-every", "--num-workers", "--out", "--accelerator", "--devices", "--strategy", "--num-nodes",
               "--precision", "--no-progress", "--resume", "--overwrite"]
# Flags of train/cv that are not TrainConfig fields
OTHER_DESTS = {"help", "debug", "config", "resume", "overwrite", "folds", "n_train", "n_test", "set_column",
               "label_column", "labels", "split_column", "features", "channels", "channel_map", "layer", "no_header",
               "executor", "parallel", "slurm_partition", "gpus_per_job", "cpus_per_job", "time_limit"}


def subparser(*names) -> argparse.ArgumentParser:
    p = build_parser()
    for name in names:
        action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        p = action.choices[name]
    return p


def parse(*argv):
    return build_parser().parse_args(list(argv))


def all_parsers(p):
    yield p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sp in a.choices.values():
                yield from all_parsers(sp)


# ------------------------------------------------------------------------------ flags from TrainConfig's fields
@pytest.mark.parametrize("command", ["train", "cv"])
def test_every_flag_is_a_field_or_a_known_extra(command):
    p = subparser(command)
    dests = {a.dest for a in p._actions}
    fields = {f.name for f in flag_fields()}
    assert fields <= dests
    assert dests - fields <= OTHER_DESTS, dests - fields - OTHER_DESTS
    skipped = set(TrainConfig.field_names()) - fields
    assert skipped == {"task_options", "paper"}  # task_options: --n-train/--n-test and the source flags
    for f in flag_fields():
        action = next(a for a in p._actions if a.dest == f.name)
        assert action.default is None, f.name  # a flag left out never overrides the config file
        assert action.help and "%" not in action.help.replace("%%", ""), f.name


def test_existing_flag_names_are_kept():
    p = subparser("train")
    assert set(TRAIN_FLAGS) <= set(p._option_string_actions), set(TRAIN_FLAGS) - set(p._option_string_actions)
    assert "--folds" in subparser("cv")._option_string_actions


def test_choices_come_from_the_registries():
    from deepsets import nn
    from deepsets.data.targets import TARGETS
    from deepsets.models import list_models

    p = subparser("train")
    choices = {a.dest: a.choices for a in p._actions if a.choices}
    assert list(choices["model"]) == list_models()
    assert list(choices["norm"]) == list(nn.NORMS)
    assert set(choices["pool"]) == {*nn.POOLS, "pma"}
    assert list(choices["target"]) == [t for t in TARGETS if t != "elements"]
    assert "elements" not in choices["target"]
    from deepsets.data import list_tasks

    task_help = p._option_string_actions["--task"].help
    assert all(t in task_help for t in list_tasks()) and "module:NAME" in task_help
    gn = subparser("grad-norms")._option_string_actions["--model"].help
    assert all(m in gn for m in list_models())


def test_flags_override_the_config_file_and_absent_flags_do_not(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("task: normal-var\nlr: 0.01\nfixed_subset: true\nprogress: false\ndevices: 2\n"
                        "depth: 6\nmodel_options: {heads: 2}\ntask_options: {n_train: 50}\n")
    cfg = config_from_args(parse("train", "--config", str(cfg_file)))
    assert (cfg.lr, cfg.fixed_subset, cfg.progress, cfg.devices, cfg.depth) == (0.01, True, False, 2, 6)
    assert cfg.model_options == {"heads": 2} and cfg.task_options == {"n_train": 50}
    cfg = config_from_args(parse("train", "--config", str(cfg_file), "--lr", "0.5", "--depth", "3", "--devices",
                                 "auto", "--model-option", "num_inducing=8", "--model-option", "heads=4",
                                 "--n-test", "7", "--set-column", "patient"))
    assert (cfg.lr, cfg.depth, cfg.devices, cfg.fixed_subset, cfg.progress) == (0.5, 3, "auto", True, False)
    assert cfg.model_options == {"heads": 4, "num_inducing": 8}
    assert cfg.task_options == {"n_train": 50, "n_test": 7, "set_column": "patient"}


def test_flags_alone_and_their_types():
    cfg = config_from_args(parse("train"))
    assert cfg == TrainConfig()  # nothing given: the dataclass defaults
    cfg = config_from_args(parse("train", "--fixed-subset", "--no-progress", "--devices", "3", "--grad-clip", "1.5",
                                 "--val-fraction", "0.2", "--eval-subsets", "4", "--model-option", "flag=true",
                                 "--model-option", "name=abc", "--max-steps", "-1"))
    assert cfg.fixed_subset is True and cfg.progress is False and cfg.devices == 3 and cfg.grad_clip == 1.5
    assert cfg.val_fraction == 0.2 and cfg.eval_subsets == 4 and cfg.max_steps == -1
    assert cfg.model_options == {"flag": True, "name": "abc"}
    args = parse("cv", "--folds", "3", "--model", "settransformer", "--pool", "pma")
    assert args.folds == 3 and config_from_args(args).pool == "pma"


# ------------------------------------------------------------------------------ misspellings fail loudly
def test_no_parser_accepts_abbreviations():
    parsers = list(all_parsers(build_parser()))
    assert len(parsers) > 10 and all(p.allow_abbrev is False for p in parsers)


def usage_error(argv, capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "Traceback" not in "".join(err), err
    return err[0]


@pytest.mark.parametrize("argv, words", [
    (["train", "--model", "deepset"], ["'deepset'", "'deepsets'", "'deepsets++'", "'settransformer++'"]),
    (["train", "--norm", "sett"], ["'sett'", "'set'", "'layer'", "'feature'", "'none'"]),
    (["cv", "--residual", "clen"], ["'clen'", "'clean'", "'nonclean'"]),
    (["train", "--pool", "summ"], ["'summ'", "'sum'", "'max'"]),
    (["train", "--target", "regresion"], ["'regresion'", "'regression'", "'classification'"]),
    (["reproduce", "table3"], ["'table3'", "'table1'", "'table2'"]),
    (["reproduce", "table1", "--budget", "gpu"], ["'gpu'", "'smoke'", "'paper'"]),
    (["trian"], ["'trian'", "'train'"]),
    (["train", "--model-option", "heads"], ["--model-option", "KEY=VALUE", "'heads'"]),
])
def test_bad_choice_names_the_value_and_the_choices(argv, words, capsys):
    line = usage_error(argv, capsys)
    for w in words:
        assert w in line, (w, line)


@pytest.mark.parametrize("argv, bad, near", [
    (["train", "--epoch", "3"], "--epoch", "--epochs"),  # an abbreviation, once silently --epochs
    (["train", "--batch", "8"], "--batch", "--batch-size"),
    (["cv", "--dept", "3"], "--dept", "--depth"),
    (["train", "--learning-rate", "0.1"], "--learning-rate", None),
    (["predict", "--checkpoint", "x.ckpt", "--input", "x.npy", "--out", "p.csv"], "--out", "--output"),
    (["eval", "--checkpoint", "x.ckpt", "--subset", "3"], "--subset", "--subsets"),
    (["grad-norms", "--out", "g", "--mod", "deepsets"], "--mod", "--model"),
    (["data", "build", "normal-var", "--simul"], "--simul", "--simulate"),
    (["bench", "--rep", "3"], "--rep", "--repeats"),
    (["--vers"], "--vers", "--version"),
])
def test_misspelled_or_shortened_flag_is_an_error(argv, bad, near, capsys):
    line = usage_error(argv, capsys)
    assert "unrecognized arguments" in line and bad in line, line
    if near:
        assert f"did you mean {near}" in line or f"or {near}" in line, line


def run_error(argv, capsys) -> str:
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "Traceback" not in "".join(err), err
    return err[0]


TINY = ["--depth", "2", "--dim", "8", "--epochs", "1", "--batch-size", "4", "--set-size", "8", "--n-train", "8",
        "--n-test", "4", "--no-progress"]


@pytest.mark.parametrize("task, words", [
    ("normal-vra", ["'normal-vra'", "normal-var", "mnist-var", "hematocrit", "module:NAME", "file.py:NAME"]),
    ("no_such_module_xyz:TASK", ["'no_such_module_xyz:TASK'", "cannot import", "no_such_module_xyz"]),
    ("missing_tasks.py:TASK", ["'missing_tasks.py:TASK'", "missing_tasks.py", "does not exist"]),
    (f"{ROOT / 'tests' / 'example_task.py'}:TASKK", ["example_task.py", "no Task named 'TASKK'", "Tasks there: TASK"]),
    ("deepsets.data:TASK", ["'deepsets.data:TASK'", "no Task named 'TASK'"]),
    (":TASK", ["':TASK'", "module:NAME"]),
])
def test_unknown_task_names_it_and_the_choices(task, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    line = run_error(["train", "--task", task, *TINY, "--out", out], capsys)
    assert line.startswith("deepsets train: error: ")
    for w in words:
        assert w in line, (w, line)
    assert not out.exists()  # nothing was created


@pytest.mark.parametrize("yaml_text, words", [
    ("task: normal-var\nepoch: 3\n", ["unknown key", "'epoch'", "'epochs'", "valid keys", "batch_size"]),
    ("task: normal-var\nmodel: deepset\n", ["unknown model 'deepset'", "deepsets++", "settransformer"]),
    ("task: normal-var\nnorm: sett\n", ["unknown norm 'sett'", "set, layer, feature, none"]),
    ("task: normal-var\nresidual: clen\n", ["unknown residual 'clen'", "clean, nonclean, none"]),
    ("target: regresion\n", ["unknown target 'regresion'", "regression, classification"]),
])
def test_config_file_misspellings_name_the_file_key_and_choices(yaml_text, words, tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    out = tmp_path / "run"
    for command in ("train", "cv"):
        line = run_error([command, "--config", cfg, "--out", out], capsys)
        assert line.startswith(f"deepsets {command}: error: ") and "bad.yaml" in line, line
        for w in words:
            assert w in line, (w, line)
    assert not out.exists()


def test_unknown_model_option_is_named(tmp_path, capsys):
    line = run_error(["train", "--task", "normal-var", *TINY, "--model-option", "hedas=4", "--out",
                      tmp_path / "run"], capsys)
    assert "'hedas'" in line and "valid options" in line, line


def test_grad_norms_unknown_model_or_task(tmp_path, capsys):
    line = run_error(["grad-norms", "--model", "deepset:4", "--out", tmp_path], capsys)
    assert "'deepset'" in line and "deepsets++" in line, line
    line = run_error(["grad-norms", "--task", "mnist-vr", "--out", tmp_path], capsys)
    assert "'mnist-vr'" in line and "mnist-var" in line, line


@pytest.mark.parametrize("entry,match", [
    (("train.clii", "add_train_commands"), "deepsets.train.clii"),
    (("train.cli", "add_train_command"), "add_train_command"),
])
def test_misspelled_subcommand_module_fails_loudly(entry, match, monkeypatch):
    """The modules that add subcommands are part of the package: a wrong name is an error, never a quietly missing
    command."""
    from deepsets import cli

    monkeypatch.setattr(cli, "_EXTENSIONS", [*cli._EXTENSIONS, entry])
    with pytest.raises((ImportError, AttributeError), match=match):
        cli.build_parser()
