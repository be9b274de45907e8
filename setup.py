"""The package list, found rather than typed (pyproject.toml holds everything else).

The task, data and config folders sit at the top of the repo (where users look for them) and install as
toolkit.tasks, toolkit.data and toolkit.conf: one import name each, editable or not, no symlinks. A
`[tool.setuptools.packages.find]` table cannot map folders to other names, and a typed list misses every new
sub-package (setuptools then warns about each folder of files it was asked to ship, e.g. conf/augment). So the
packages are found here: every folder under toolkit/, and every folder under tasks/, data/ and conf/ under its
toolkit.* name. tests/test_cli.py checks the wheel holds every source file and the build warns about nothing."""

from setuptools import find_namespace_packages, setup

#: installed name -> folder in the repo
MAPPED = {"toolkit.tasks": "tasks", "toolkit.data": "data", "toolkit.conf": "conf"}
SKIP = ["__pycache__", "*.__pycache__", "*.__pycache__.*"]


def packages() -> list[str]:
    found = find_namespace_packages(include=["toolkit", "toolkit.*"], exclude=SKIP)
    for name, folder in MAPPED.items():
        found += [name] + [f"{name}.{sub}" for sub in find_namespace_packages(where=folder, exclude=SKIP)]
    return sorted(set(found))


setup(packages=packages(), package_dir=MAPPED, package_data={"toolkit.conf": ["*.yaml", "**/*.yaml"]})
