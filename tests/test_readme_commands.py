"""Every command in README.md's shell code blocks parses with its CLI's own parser, and every repo
file those blocks name exists: the docs cannot drift from the code unnoticed."""
import importlib
import os
import re
import shlex

import pytest

from dtr_scale.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONSOLE = {"dtr-prep": "prep", "dtr-train": "train", "dtr-export": "export", "dtr-sample": "sample",
           "dtr-evaluate": "evaluate"}
REPO_DIRS = ("configs/", "launch/", "benchmarks/", "data_prep/", "docs/", "dtr_scale/", "tests/")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*(\.[a-z]+)?$")  # CFG, FILE, W.pt: stand for the reader's own


def shell_blocks(text):
    """Code blocks fenced as bash/sh or not labelled (python blocks are not commands)."""
    for match in re.finditer(r"```(\w*)\n(.*?)```", text, re.S):
        if match.group(1) in ("", "bash", "sh", "shell"):
            yield match.group(2)


def logical_lines(block):
    """Lines with backslash continuations joined; heredoc bodies dropped."""
    lines, current, heredoc = [], "", None
    for raw in block.splitlines():
        if heredoc is not None:
            heredoc = None if raw.strip() == heredoc else heredoc
            continue
        current += raw.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        lines.append(current)
        here = re.search(r"<<-?'?(\w+)'?", current)
        heredoc = here.group(1) if here else None
        current = ""
    return lines


def commands():
    """(module, argv, text) for every `-m dtr_scale.X` / `dtr-X` invocation in the README."""
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    found = []
    for block in shell_blocks(text):
        for line in logical_lines(block):
            tokens = shlex.split(line, comments=True)
            for i, tok in enumerate(tokens):
                module = None
                if tok == "-m" and i + 1 < len(tokens) and tokens[i + 1].startswith("dtr_scale."):
                    module, start = tokens[i + 1].split(".", 1)[1], i + 2
                elif tok in CONSOLE:
                    module, start = CONSOLE[tok], i + 1
                if module:
                    argv = []
                    for arg in tokens[start:]:
                        if arg in ("|", "||", "&&", ";", ">", "2>&1"):
                            break
                        if arg != "...":  # the README's "and the rest of your options"
                            argv.append(arg)
                    found.append((module, argv, line.strip()))
                    break
    return found


def repo_paths():
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    paths = set()
    for block in shell_blocks(text):
        for line in logical_lines(block):
            for tok in shlex.split(line, comments=True):
                for part in re.split(r"[=:]", tok):
                    if part.startswith(REPO_DIRS) and "*" not in part and "$" not in part:
                        paths.add(part)
    return sorted(paths)


COMMANDS = commands()


def test_the_readme_has_commands_for_every_cli():
    assert {m for m, _, _ in COMMANDS} >= {"prep", "train", "export", "sample", "evaluate", "demo"}
    assert len(COMMANDS) >= 15


@pytest.mark.parametrize("module,argv,text", COMMANDS, ids=[c[2][:70] for c in COMMANDS])
def test_command_parses(module, argv, text):
    cli = importlib.import_module(f"dtr_scale.{module}")
    if module == "train":
        args = cli.parse_args(argv)
        config = None if PLACEHOLDER.match(args.config) else os.path.join(REPO, args.config)
        if config is not None:
            assert os.path.isfile(config), f"{text}: no config {args.config}"
        overrides = list(args.overrides) + ([f"checkpoint.resume={args.resume}"] if args.resume else [])
        load_config(config, overrides)  # keys, types and ranges, as the run would check them
    elif module == "sample":
        from dtr_scale.sampling import parse_options

        parse_options(cli.build_parser().parse_intermixed_args(argv).options)
    elif module == "evaluate":
        cli.parse_args(argv)
    else:  # prep, export, demo
        cli.build_parser().parse_args(argv)


@pytest.mark.parametrize("path", repo_paths())
def test_named_repo_file_exists(path):
    assert os.path.exists(os.path.join(REPO, path)), path


def test_parser_catches_a_wrong_command():
    """The check can fail: a misspelt option or key is refused."""
    with pytest.raises(SystemExit):
        importlib.import_module("dtr_scale.evaluate").parse_args(["--samplez", "x.npz", "--ref", "r", "--out", "o"])
    with pytest.raises(ValueError):
        load_config(os.path.join(REPO, "configs", "digits-tiny.yaml"), ["train.max_step=3"])
