"""`python -m toolkit [overrides]`: Hydra composes conf/ and hands the config to `toolkit.run.run`."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from toolkit.conf import CONF_DIR, MOVED_KEYS, moved_key_hint
from toolkit.console import quiet_console, verbose_requested
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

    quiet_console(verbose=verbose_requested(cfg))  # filters third-party noise at its source; verbose=true: all of it
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


def check_moved_keys(args: list[str]) -> None:
    """`task.compile=int8` (the key before it moved to `compile`): one line naming the new key, not "no such key"."""
    for arg in args:
        key, equals, value = arg.partition("=")
        key = key.lstrip("+~")
        if equals and key in MOVED_KEYS:
            raise ConfigError(key, value, moved_key_hint(key, value))


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


#: flags after which Hydra does not run the job, or reads configs this check does not see: it leaves them to Hydra
_SKIP_KEY_CHECK_FLAGS = ("-h", "--help", "--hydra-help", "-i", "--info", "-sc", "--shell-completion",
                         "-cd", "--config-dir", "-cp", "--config-path", "-cn", "--config-name", "hydra.searchpath")
#: compositions at most (one per swept group value) before the key check leaves a large sweep to Hydra
_MAX_COMPOSITIONS = 8


def check_override_keys(args: list[str]) -> None:
    """`backbone.alpah=0.5`: one line with the closest valid keys, instead of Hydra's "not in struct" message and
    its advice to add the key with `+` (which the builder would then refuse).

    Composes the config for the command line's group choices (`task=...`, `experiment=...`: their files may add
    keys) and its `+`/`++`/`~` overrides with Hydra's compose API, then applies Hydra's struct rule to each plain
    `key=value`: the key must exist. A multirun sweep over a group composes each of its values; a key is refused
    only when no composition has it. `hydra.*` keys, other config folders and anything this check cannot parse
    or compose are left to Hydra (it reports them, at more length)."""
    if any(a.split("=", 1)[0] in _SKIP_KEY_CHECK_FLAGS or a.startswith(_SKIP_KEY_CHECK_FLAGS[-1]) for a in args):
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser

    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__")}
    try:
        overrides = OverridesParser.create().parse_overrides(
            [a for a in args if ("=" in a or a.startswith("~")) and not a.startswith("-")])
        base, sweeps, plain = [], [], []
        for o in overrides:
            name = o.key_or_group
            if name == "hydra" or name.startswith(("hydra.", "hydra/")):
                continue
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
            if name in groups or o.package is not None or o.is_add() or o.is_force_add() or o.is_delete():  # composed: groups, +, ++, ~
                prefix = "~" if o.is_delete() else "++" if o.is_force_add() else "+" if o.is_add() else ""
                package = f"@{o.package}" if o.package is not None else ""
                line = lambda v, o=o, prefix=prefix, package=package: (  # noqa: E731
                    f"{prefix}{o.key_or_group}{package}" + ("" if o.is_delete() and o.value() is None else f"={v}"))
                base.append(line(values[0]))
                sweeps += [(len(base) - 1, line(v)) for v in values[1:] if name in groups]
            else:
                plain.append((name, o.get_value_element_as_str() if not o.is_sweep_override() else ",".join(values)))
    except Exception:  # noqa: BLE001 - anything unparsable: Hydra reports it
        return
    if not plain or len(sweeps) + 1 > _MAX_COMPOSITIONS:
        return
    variants = [base] + [[*base[:i], line, *base[i + 1:]] for i, line in sweeps]
    configs = _compose_all(variants)
    if configs is None:
        return
    for key, value in plain:
        if not any(_has_key(cfg, key) for cfg in configs):
            raise ConfigError(key, value, unknown_key_hint(configs[0], key))


def _compose_all(variants: list[list[str]]) -> list | None:
    """The config each override list composes to (no interpolation resolved); None when Hydra cannot compose one."""
    from hydra import compose, initialize_config_module

    try:
        with initialize_config_module("toolkit.conf", version_base="1.3"):
            return [compose("config", overrides=overrides) for overrides in variants]
    except Exception:  # noqa: BLE001 - a composition error: Hydra reports it when it composes
        return None


def _has_key(cfg, key: str) -> bool:
    """Hydra's struct rule for `key=value`: every part of the dotted key exists. Below a value that is an
    interpolation, None or not a container, Hydra decides (the check cannot see what it will be)."""
    from omegaconf import DictConfig, ListConfig

    node = cfg
    for part in key.split("."):
        if isinstance(node, DictConfig):
            if node._is_none() or node._is_interpolation() or node._is_missing():
                return True
            if part not in list(node):  # DictConfig `in` resolves, and counts ??? as absent
                return False
            node = node._get_node(part)
        elif isinstance(node, ListConfig):
            return True
        else:
            return True
    return True


def _config_paths(cfg, prefix: str = "") -> list[str]:
    """Every dotted key of a composed config (interpolations not followed), `hydra` left out."""
    from omegaconf import DictConfig

    paths = []
    if isinstance(cfg, DictConfig) and not (cfg._is_none() or cfg._is_interpolation() or cfg._is_missing()):
        for key in cfg:
            if not prefix and key == "hydra":
                continue
            path = f"{prefix}{key}"
            paths.append(path)
            paths += _config_paths(cfg._get_node(key), f"{path}.")
    return paths


def unknown_key_hint(cfg, key: str) -> str:
    """"no such key; did you mean backbone.alpha? keys of backbone: name, alpha, ...": close keys next to the
    mistyped one, else keys of the same (or a close) name in other sections; then the parent's keys."""
    import difflib

    from omegaconf import DictConfig

    parts = key.split(".")
    depth, node = 0, cfg
    while depth < len(parts) - 1 and isinstance(node, DictConfig) and parts[depth] in list(node):
        node = node._get_node(parts[depth])
        depth += 1
    parent = ".".join(parts[:depth])
    siblings = [str(k) for k in node] if isinstance(node, DictConfig) else []
    close = [f"{parent}.{k}" if parent else k for k in difflib.get_close_matches(parts[depth], siblings, n=3)]
    if depth < len(parts) - 1:  # a missing section (`model.alpha`): its key anywhere else
        close = []
    if not close:  # `model.alpha`: a key of that name (or a close one) in another section
        leaf = parts[-1]
        close = [p for p in _config_paths(cfg)
                 if difflib.SequenceMatcher(None, p.rsplit(".", 1)[-1], leaf).ratio() >= 0.8]
        close.sort(key=lambda p: -difflib.SequenceMatcher(None, p, key).ratio())
    suggestions = close[:3]
    did_you_mean = f"did you mean {' or '.join(suggestions)}? " if suggestions else ""
    return f"no such key; {did_you_mean}keys of {parent or 'the config'}: {', '.join(siblings)}"


def main() -> None:
    from toolkit.distill.overrides import expand_teacher_override

    sys.argv[1:] = expand_teacher_override(sys.argv[1:])  # teacher=<file> -> teacher=path teacher.path=<file>
    try:
        check_moved_keys(sys.argv[1:])
        check_group_choices(sys.argv[1:])
        check_override_keys(sys.argv[1:])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    register_resolvers()
    _hydra_entry()


if __name__ == "__main__":
    main()
