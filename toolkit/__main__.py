"""`python -m toolkit [overrides]`: Hydra composes conf/ and hands the config to `toolkit.run.run`."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from toolkit.errors import ToolkitError


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _hydra_entry(cfg: DictConfig) -> float | None:
    from toolkit.run import run

    try:
        result = run(cfg)
    except ToolkitError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    objective = (result or {}).get("objective")  # what Hydra sweepers optimise, when a mode reports one
    return objective


def main() -> None:
    _hydra_entry()


if __name__ == "__main__":
    main()
