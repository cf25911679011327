"""Read the dependency floors out of pyproject.toml, for scripts/test-lowest.

    python scripts/dependency_floors.py extras   # the runtime extras, one per line
    python scripts/dependency_floors.py check    # every direct runtime dependency at its floor?

Runtime means what a host application installs: ``[project.dependencies]`` and every optional
extra except the development ones (``DEV_EXTRAS``). Development tools stay at their newest
versions in the lowest job: a host never runs our pytest or mypy, so their floors say nothing
about what the library supports.

``check`` runs inside the lowest virtualenv (it needs ``packaging``, which pytest brings) and
fails when a dependency is installed above its declared floor, so a resolver that quietly lifted
a floor (because a dev tool needs a newer version, say) cannot turn the lowest job into a second
newest job.
"""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

DEV_EXTRAS = frozenset({"dev", "test", "tests", "docs", "lint", "bench", "langgraph-tests"})
# The framework backends' extras pull in the frameworks, which need far newer versions of our
# own dependencies (openai-agents needs pydantic 2.12): at our floors they cannot be installed at
# all. The lowest job tests the core library at its floors; the backends are tested in the
# newest job, against the frameworks as their users install them.
FRAMEWORK_EXTRAS = frozenset({"adk", "langgraph", "openai-agents"})
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def _project() -> dict[str, Any]:
    with PYPROJECT.open("rb") as f:
        project: dict[str, Any] = tomllib.load(f)["project"]
    return project


def runtime_extras() -> list[str]:
    extras: dict[str, list[str]] = _project().get("optional-dependencies", {})
    return sorted(name for name in extras if name not in DEV_EXTRAS | FRAMEWORK_EXTRAS)


def runtime_requirements() -> list[str]:
    project = _project()
    requirements: list[str] = list(project.get("dependencies", []))
    extras: dict[str, list[str]] = project.get("optional-dependencies", {})
    for name in runtime_extras():
        requirements.extend(extras[name])
    return requirements


def check() -> int:
    from packaging.requirements import Requirement
    from packaging.version import Version

    problems: list[str] = []
    for line in runtime_requirements():
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
        try:
            installed = Version(metadata.version(req.name))
        except metadata.PackageNotFoundError:
            problems.append(f"{req.name}: not installed")
            continue
        if not floors:
            problems.append(f"{req.name}: no floor declared ({line!r}); installed {installed}")
        elif installed != max(floors):
            problems.append(f"{req.name}: declared {line!r} but {installed} is installed")
        else:
            print(f"  {req.name}=={installed}  ({line})")
    for problem in problems:
        print(f"FLOOR NOT TESTED: {problem}", file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str]) -> int:
    if argv == ["extras"]:
        print("\n".join(runtime_extras()))
        return 0
    if argv == ["check"]:
        return check()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
