"""The repository as a fresh clone sees it: referenced configs exist, nothing large or generated
is tracked, the docs link only to files inside the repository."""
import configparser
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONFIG_REF = re.compile(r"(?<![\w/.-])configs/[\w./-]+\.(?:ya?ml|json)")


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [p for p in out.stdout.decode().split("\0") if p]


def text_files(*roots: str) -> list[Path]:
    files = []
    for root in roots:
        path = REPO / root
        files += [path] if path.is_file() else [p for p in sorted(path.rglob("*")) if p.is_file()]
    return [p for p in files if p.suffix not in (".png", ".pth", ".pt", ".pyc")]


def test_every_named_config_file_exists():
    refs = {}
    for path in text_files("README.md", "launch", "configs"):
        for ref in CONFIG_REF.findall(path.read_text(errors="replace")):
            refs.setdefault(ref, path.relative_to(REPO).as_posix())
    assert refs, "the scan found no configs/... reference at all: the pattern is broken"
    missing = {ref: where for ref, where in refs.items() if not (REPO / ref).is_file()}
    assert not missing, f"configs named but not in the repository (file: named in): {missing}"


def test_no_tracked_file_over_1_mb_and_no_generated_outputs():
    big = [p for p in tracked_files() if (REPO / p).is_file() and os.path.getsize(REPO / p) > 1 << 20]
    assert not big, f"tracked files over 1 MB: {big}"
    generated = [p for p in tracked_files() if "/.work/" in f"/{p}" or p.startswith(("runs/", "demo_out/"))]
    assert not generated, f"generated outputs are tracked: {generated}"


def test_python_requires_is_stated_once():
    text = (REPO / "setup.cfg").read_text()
    assert len(re.findall(r"^\s*python_requires\s*=", text, flags=re.M)) == 1
    configparser.ConfigParser().read_string(text)  # still a valid setup.cfg


def test_docs_link_only_inside_the_repository():
    docs = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), *sorted(REPO.glob("*/README.md"))]
    offenders = {}
    for path in docs:
        text = path.read_text()
        for bad in ("shared/", "../"):
            if bad in text:
                offenders.setdefault(path.relative_to(REPO).as_posix(), []).append(bad)
        for target in re.findall(r"\]\(([^)#\s]+)", text):  # markdown links to local files
            if "://" not in target and not (path.parent / target).exists():
                offenders.setdefault(path.relative_to(REPO).as_posix(), []).append(target)
    assert not offenders, f"links that leave the repository or point nowhere: {offenders}"
