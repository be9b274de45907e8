"""`python -m toolkit [overrides]`: Hydra composes conf/ and hands the config to `toolkit.run.run`."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from toolkit.conf import CONF_DIR
from toolkit.disk_errors import quiet_log_file_errors, storage_error_message
from toolkit.errors import ConfigError, ToolkitError
from toolkit.run_folder import claim_output_dir


def unique_dir(path: str) -> str:
    """`path`, created now; `path_1`, `path_2`... when it exists already (two runs started in the same second).

    Hydra's run and sweep folders are `${unique_dir:<log_dir>/<task>/runs/<time>}`: `mkdir` without `exist_ok`
    claims a folder atomically, so concurrent runs never share one. Registered with `use_cache`: Hydra resolves the
    folder more than once per run (and once per sweep job) and must get the same answer each time."""
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(10_000):
        candidate = base if n == 0 else base.with_name(f"{base.name}_{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return str(candidate)
    raise ToolkitError(f"{base}: 10000 run folders of this name exist already; choose another paths.log_dir")


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("unique_dir", unique_dir, use_cache=True, replace=True)


@hydra.main(version_base="1.3", config_path="pkg://toolkit.conf", config_name="config")
def _hydra_entry(cfg: DictConfig) -> float | None:
    from toolkit.run import run

    route_lightning_logs_through_hydra()
    quiet_log_file_errors()  # a log file on a full disk: one warning, not a traceback per line
    try:
        claim_output_dir(cfg)  # paths.output_dir set apart from the Hydra run folder (claimed by ClaimRunFolder)
        result = run(cfg)
    except Exception as e:
        message = error_line(e, cfg)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    objective = (result or {}).get("objective")  # what Hydra sweepers optimise, when a mode reports one
    return objective


def route_lightning_logs_through_hydra() -> None:
    """Lightning gives its `lightning` logger a console handler of its own (and `lightning.pytorch` one too, with
    propagation off, when imported before logging was configured). Hydra's root handlers already print to the
    console and write the run's log file, so drop Lightning's: each of its lines then appears once, and in the file."""
    import logging

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_a_lightning_tip)  # one function: added once over a sweep's jobs


def _not_a_lightning_tip(record) -> bool:
    """Lightning's advertisements for its cloud services ("💡 Tip: ... litlogger / litmodels") say nothing about the run."""
    return not str(record.msg).startswith("💡 Tip:")


def error_line(error: BaseException, cfg: DictConfig) -> str | None:
    """The one line for an error the user can fix: a ToolkitError, or a full disk / read-only or forbidden folder
    anywhere in the cause chain (naming the file, else the run folder); None for a bug (a traceback)."""
    cause = toolkit_cause(error)
    if cause is not None:
        return str(cause)
    paths = cfg.get("paths") or {}
    places = {key: paths.get(key.removeprefix("paths.")) for key in ("paths.cache_dir", "paths.output_dir", "paths.log_dir")}
    return storage_error_message(error, places=places, folder=paths.get("output_dir"))


def toolkit_cause(error: BaseException) -> ToolkitError | None:
    """The ToolkitError behind `error`, also when Hydra's instantiate wrapped it (InstantiationException)."""
    while error is not None:
        if isinstance(error, ToolkitError):
            return error
        error = error.__cause__ or error.__context__
    return None


def group_options(group: str) -> list[str]:
    """Options of a config group: its yaml files, nested folders as `sub/name` (e.g. experiment=dogs/a)."""
    root = CONF_DIR / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def check_group_choices(args: list[str]) -> None:
    """`backbone=foo` with no conf/backbone/foo.yaml: one line naming the group and its options.

    Hydra would report it too, but over a dozen lines with its search path; anything this check
    cannot parse is left to Hydra.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any(a.startswith(("-cd", "--config-dir", "-cp", "--config-path", "-cn", "--config-name", "hydra.searchpath"))
           for a in args):
        return  # other config folders may add options: Hydra decides
    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__")}
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if "=" in a and not a.startswith("-")])
    except Exception:
        return
    for override in overrides:
        if override.key_or_group not in groups or override.package is not None or override.is_delete():
            continue
        values = (list(override.sweep_string_iterator()) if override.is_sweep_override()
                  else [override.get_value_element_as_str()])
        for value in values:
            if value != "null" and not (CONF_DIR / override.key_or_group / f"{value}.yaml").is_file():
                options = group_options(override.key_or_group)
                raise ConfigError(override.key_or_group, value, f"allowed: {', '.join(options) or '(none yet)'}")


def main() -> None:
    from toolkit.distill.overrides import expand_teacher_override

    sys.argv[1:] = expand_teacher_override(sys.argv[1:])  # teacher=<file> -> teacher=path teacher.path=<file>
    try:
        check_group_choices(sys.argv[1:])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    register_resolvers()
    _hydra_entry()


if __name__ == "__main__":
    main()
