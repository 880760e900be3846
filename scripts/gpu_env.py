"""Make a Python environment for the GPU check on a host whose own torch sees the GPU, without replacing it.

    python3 scripts/gpu_env.py [--venv .venv-gpu] [--wheels .whl]     # prints the environment's python

GPU images ship a CUDA build of torch and torchvision; `pip install lightly` there could pull a torchvision
that pins another torch and replace the host's CUDA build. So:
1. the host is checked first: Python >= 3.11 (the code's floor), torch and torchvision importable;
2. a venv with the host's site-packages (`--system-site-packages`: its torch is used, never copied or changed)
   gets only the packages the check needs and the host lacks, under a constraints file that pins torch,
   torchvision and every package the host already has at its installed version;
3. pip resolves that install as a dry run first (from the wheel folder when it has wheels, for hosts that reach
   no index; else from the index): every package that cannot be had is named before any step runs.
Exit 2 with the reasons when the host cannot run the check.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

MIN_PYTHON = (3, 11)
HOST = ("torch", "torchvision")  # what the host must bring: CUDA builds, never installed here
# What the check imports (module -> requirement; requirements.txt's pins where it has them).
NEED = {
    "lightly": "lightly==1.6.0",
    "ts": "torchserve==0.12.0",
    "model_archiver": "torch-model-archiver==0.12.0",
    "pytorch_lightning": "pytorch-lightning==2.6.6",
    "sklearn": "scikit-learn",
    "matplotlib": "matplotlib",
    "yaml": "pyyaml",
    "requests": "requests",
    "psutil": "psutil",
    "pytest": "pytest",
    "pytest_timeout": "pytest-timeout",
    "hypothesis": "hypothesis",
    # the handler's base64 (bench/serve_bench.py, where Java runs TorchServe)
    "pybase64": "pybase64==1.5.1",
}


@dataclass
class Plan:
    errors: list[str] = field(default_factory=list)  # the host cannot run the check: why
    install: list[str] = field(default_factory=list)  # requirements the host lacks
    constraints: list[str] = field(default_factory=list)  # name==version the install must not change


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def plan(
    python: tuple[int, int],
    installed: dict[str, str],
    missing_modules: set[str],
    wheels: list[str] | None,
) -> Plan:
    """The decision, from facts about the host: its Python, its installed distributions (name -> version), the
    modules of NEED it cannot import, and the wheel files on offer (None: an index is used instead)."""
    p = Plan()
    if python < MIN_PYTHON:
        p.errors.append(
            f"Python {python[0]}.{python[1]}: the code needs >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]}; "
            "set PYTHON to a newer interpreter whose torch sees the GPU"
        )
    versions = {norm(k): v for k, v in installed.items()}
    for name in HOST:
        if name not in versions:
            p.errors.append(f"{name} is not installed for this Python: the GPU check uses the host's CUDA build")
    p.constraints = [f"{name}=={v}" for name, v in sorted(versions.items())]
    p.install = [NEED[m] for m in NEED if m in missing_modules]
    if wheels is not None:
        offered = {}
        for w in wheels:
            parts = Path(w).name.split("-")
            if len(parts) >= 3:
                offered.setdefault(norm(parts[0]), set()).add(parts[1])
        for req in p.install:
            name, _, version = req.partition("==")
            have = offered.get(norm(name), set())
            if not have or (version and version not in have):
                p.errors.append(f"{req}: not in the wheel folder (add it with scripts/gpu_wheels.sh)")
    return p


def host_facts(python: str) -> tuple[tuple[int, int], dict[str, str], set[str]]:
    """The facts `plan` takes, read from `python` (which may not be this interpreter)."""
    code = (
        "import sys, json, importlib.util, importlib.metadata as md\n"
        "mods = json.loads(sys.argv[1])\n"
        "print(json.dumps({'python': sys.version_info[:2],"
        " 'installed': {d.metadata['Name']: d.version for d in md.distributions() if d.metadata['Name']},"
        " 'missing': [m for m in mods if importlib.util.find_spec(m) is None]}))\n"
    )
    out = subprocess.run([python, "-c", code, json.dumps(list(NEED))], capture_output=True, text=True, check=True)
    facts = json.loads(out.stdout)
    return tuple(facts["python"]), facts["installed"], set(facts["missing"])


def main() -> int:
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--python", default=sys.executable, help="the host's Python (default: this one)")
    a.add_argument("--venv", type=Path, default=Path(".venv-gpu"))
    a.add_argument("--wheels", type=Path, default=Path(".whl"))
    args = a.parse_args()
    version, installed, missing = host_facts(args.python)
    wheels = sorted(str(p) for p in args.wheels.glob("*.whl")) if args.wheels.is_dir() else []
    offline = bool(wheels)
    p = plan(version, installed, missing, wheels if offline else None)
    if p.errors:
        print("gpu_env: this host cannot run the GPU check:\n  " + "\n  ".join(p.errors), file=sys.stderr)
        return 2
    if not p.install:
        print(args.python)
        return 0
    subprocess.run([args.python, "-m", "venv", "--system-site-packages", str(args.venv)], check=True)
    py = str(args.venv / "bin" / "python")
    constraints = args.venv / "host-constraints.txt"
    constraints.write_text("\n".join(p.constraints) + "\n")
    source = ["--no-index", "--find-links", str(args.wheels)] if offline else []
    pip = [py, "-m", "pip", "install", "-q", "--no-compile", "-c", str(constraints), *source, *p.install]
    dry = subprocess.run([*pip, "--dry-run"], capture_output=True, text=True)
    if dry.returncode != 0:
        lines = [ln for ln in dry.stderr.splitlines() if "ERROR" in ln or "conflict" in ln.lower() or "requires" in ln]
        print(
            f"gpu_env: {' '.join(p.install)} cannot be installed beside the host's "
            f"torch {installed.get('torch')} / torchvision {installed.get('torchvision')} "
            f"({'wheel folder ' + str(args.wheels) if offline else 'the package index'}):\n  "
            + "\n  ".join(lines or dry.stderr.splitlines()[-10:]),
            file=sys.stderr,
        )
        return 2
    subprocess.run(pip, check=True)
    _, now, _ = host_facts(py)
    changed = [f"{n} {installed.get(n)} -> {now.get(n)}" for n in HOST if now.get(n) != installed.get(n)]
    if changed:  # the constraints make this impossible; checked because the whole point is the host's CUDA build
        print(f"gpu_env: the install changed the host's {', '.join(changed)}", file=sys.stderr)
        return 2
    print(py)
    return 0


if __name__ == "__main__":
    sys.exit(main())
