"""`teacher=<file>` on the command line: turned into `teacher=path teacher.path=<file>` before Hydra parses it.

`teacher` is a config group (`conf/teacher/*.yaml`: none, path, model...), and Hydra only accepts a
group's option names as its values; a teacher file is the common case, so a value that names no
option is read as a path. Kept free of heavy imports: it runs before every command.
"""

from __future__ import annotations

from toolkit.conf import CONF_DIR

TEACHER_OPTIONS_DIR = CONF_DIR / "teacher"


def teacher_options() -> set[str]:
    return {p.stem for p in TEACHER_OPTIONS_DIR.glob("*.yaml")}


def expand_teacher_override(args: list[str]) -> list[str]:
    """Rewrite `teacher=<not an option>` into `teacher=path teacher.path=<value>`; `teacher=null` means none."""
    options = teacher_options()
    out = []
    for arg in args:
        if not arg.startswith("teacher="):
            out.append(arg)
            continue
        value = arg[len("teacher="):]
        if value in ("null", "None", ""):
            out.append("teacher=none")
        elif value in options or "," in value:  # an option, or a multirun sweep over options
            out.append(arg)
        else:
            out += ["teacher=path", f"teacher.path={value}"]
    return out
