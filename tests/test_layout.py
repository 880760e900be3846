"""The layout's one rule: a folder imports only folders below its job, and nothing imports a job's pipeline."""

import ast
from pathlib import Path

from conftest import REPO

# folder -> the project folders it may import (README.md, "Layout").
ALLOWED = {
    "handler": set(),
    "jobs": set(),
    "dataset": {"handler"},
    "export": {"handler"},
    "evaluation": {"handler", "dataset", "export", "jobs"},
    "training": {"handler", "dataset", "export", "jobs", "evaluation"},
    "serving": {"handler", "export", "jobs"},
}
PIPELINES = {"training.train"}  # the jobs themselves: only the clients and bench/ import them


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_folders_import_only_folders_below_their_job():
    wrong = []
    for folder, allowed in ALLOWED.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            for name in _imports(path):
                top = name.split(".")[0]
                if top in ALLOWED and top != folder and top not in allowed:
                    wrong.append(f"{path.relative_to(REPO)} imports {name}")
                if name in PIPELINES:
                    wrong.append(f"{path.relative_to(REPO)} imports the pipeline {name}")
    assert wrong == []


def test_every_folder_is_a_package_and_named_in_the_readme():
    readme = (REPO / "README.md").read_text()
    for folder in ALLOWED:
        assert (REPO / folder / "__init__.py").is_file(), folder
        assert f"\n{folder}/ " in readme, f"README.md's layout does not name {folder}/"
