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


# Repository paths as comments and docs write them: from the top (`dtr_scale/parallel/fsdp.py`,
# `docs/architecture.md`) or inside the package (`parallel/fsdp.py`), and the upper-case top-level
# documents (`README.md`). Outputs that runs write (benchmarks/results/) are not files of the clone.
TOP_PATH = re.compile(r"(?<![\w/.-])((?:dtr_scale|tests|benchmarks|launch|configs|docs|data_prep)/[\w./-]*\w"
                      r"\.(?:py|md|ya?ml|json|sh|cfg|txt))")
PACKAGE_PATH = re.compile(r"(?<![\w/.-])((?:parallel|models|data|diffusion|evaluation|sampling|flow)/\w+\.py)\b")
TOP_DOC = re.compile(r"(?<![\w/.-])([A-Z][A-Z_]+\.md)\b")
SOURCE_SUFFIXES = (".py", ".md", ".sh", ".yaml", ".yml", ".cfg", ".txt", ".sbatch")


def named_paths(text: str) -> set[str]:
    """Repository-relative paths named in `text` (package-relative ones under dtr_scale/)."""
    names = set(TOP_PATH.findall(text)) | set(TOP_DOC.findall(text))
    for ref in PACKAGE_PATH.findall(text):
        if not (REPO / ref).exists():  # tests/..., benchmarks/... match TOP_PATH already
            names.add(f"dtr_scale/{ref}")
    return {n for n in names if not n.startswith("benchmarks/results/")}


def test_path_scan_finds_what_comments_write():
    text = "see parallel/fsdp.py and docs/architecture.md (README.md); not x/parallel/a.py"
    assert named_paths(text) == {"dtr_scale/parallel/fsdp.py", "docs/architecture.md", "README.md"}


def test_files_named_in_code_comments_and_docs_exist():
    missing = {}
    for rel in tracked_files():
        path = REPO / rel
        if not path.is_file() or not rel.endswith(SOURCE_SUFFIXES) and path.name != "Makefile":
            continue
        for name in named_paths(path.read_text(errors="replace")):
            if not (REPO / name).exists():
                missing.setdefault(rel, []).append(name)
    assert not missing, f"files named but not in the repository (named in: names): {missing}"
