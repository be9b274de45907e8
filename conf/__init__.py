"""The Hydra configs, installed as the package `toolkit.conf` (Hydra reads them as `pkg://toolkit.conf`)."""

from pathlib import Path

if __name__ != "toolkit.conf":  # the repo root is on sys.path: `import conf` would give a second identity
    raise ImportError(f"import toolkit.conf, not {__name__}: the repo's conf/ folder installs as toolkit.conf")

CONF_DIR = Path(__file__).resolve().parent

#: keys that moved, by their old name: the CLI and `run(cfg)` answer the old one with one line naming the new one
MOVED_KEYS = {"task.compile": "compile"}  # a run setting, not the task's: it stays out of checkpoints


def moved_key_hint(old: str, value) -> str:
    return f"moved: this run setting is now the top-level key {MOVED_KEYS[old]}: {MOVED_KEYS[old]}={value}"
