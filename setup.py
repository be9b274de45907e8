"""The package list, found rather than typed (pyproject.toml holds everything else, the folder mapping included).

The task, data and config folders sit at the top of the repo (where users look for them) and install as
toolkit.tasks, toolkit.data and toolkit.conf ([tool.setuptools.package-dir]). A `[tool.setuptools.packages.find]`
table does not look inside mapped folders, and a typed list misses every new sub-package (setuptools then warns
about each folder of files it was asked to ship, e.g. conf/augment). So the packages are found here: every folder
under toolkit/, and every folder under each mapped folder under its toolkit.* name. tests/test_cli.py checks the
wheel holds every source file and that the build warns about nothing."""

from pathlib import Path

from setuptools import find_namespace_packages, setup

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: setuptools (imported above) puts its vendored tomli on sys.path
    import tomli as tomllib

SKIP = ["__pycache__", "*.__pycache__", "*.__pycache__.*"]


def packages() -> list[str]:
    config = tomllib.loads((Path(__file__).parent / "pyproject.toml").read_text())
    mapped = config["tool"]["setuptools"]["package-dir"]  # installed name -> folder in the repo
    found = find_namespace_packages(include=["toolkit", "toolkit.*"], exclude=SKIP)
    for name, folder in mapped.items():
        found += [name] + [f"{name}.{sub}" for sub in find_namespace_packages(where=folder, exclude=SKIP)]
    return sorted(set(found))


setup(packages=packages())
