"""The Hydra configs, installed as the package `toolkit.conf` (Hydra reads them as `pkg://toolkit.conf`)."""

from pathlib import Path

if __name__ != "toolkit.conf":  # the repo root is on sys.path: `import conf` would give a second identity
    raise ImportError(f"import toolkit.conf, not {__name__}: the repo's conf/ folder installs as toolkit.conf")

CONF_DIR = Path(__file__).resolve().parent
