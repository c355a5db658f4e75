"""A spec's ``[targets]`` table: the targets it declares, checked against each other.

An entry names a platform, glibc level, variant and maybe a Python; one without a Python
makes a target for each of the spec's (``<name>-py<version>`` when there are several).
Beyond what :meth:`Target.create` checks of each, the targets must have distinct names
and must not overlap (one lock resolves one set of versions per platform, Python and
variant): rules about the whole table, kept here with the expansion, apart from the rest
of the spec.
"""

from __future__ import annotations

from .errors import Problem, TargetError
from .targets import DEFAULT_GLIBC, Target

__all__ = ["DEFAULT_TARGETS", "parse_targets"]

DEFAULT_TARGETS = ("linux-x86_64",)
_TARGET_KEYS = {"platform", "python", "glibc", "variant"}


def parse_targets(
    value: object, pythons: tuple[str, ...], problems: list[Problem]
) -> tuple[Target, ...]:
    """The targets the spec's ``targets`` table declares (``None``: the default ones);
    each problem is added to ``problems`` with its key."""
    if value is None:
        value = {name: {} for name in DEFAULT_TARGETS}
    if not isinstance(value, dict) or not value:
        problems.append(
            Problem("targets", "expected a table of targets, e.g. [targets.linux-x86_64]")
        )
        return ()
    out: list[Target] = []
    by_name: dict[str, str] = {}  # target name -> the table that made it
    by_env: dict[tuple[str, tuple[int, int], str], str] = {}
    for name, settings in value.items():
        where = f"targets.{name}"
        if not isinstance(settings, dict):
            problems.append(Problem(where, "expected a table"))
            continue
        for key in sorted(set(settings) - _TARGET_KEYS):
            problems.append(Problem(f"{where}.{key}", "unknown key"))
        bad = sorted(k for k in _TARGET_KEYS if k in settings and not isinstance(settings[k], str))
        for key in bad:
            number = isinstance(settings[key], int | float) and not isinstance(settings[key], bool)
            # TOML reads an unquoted 2.28 as a float; the text is what names the level.
            # Only a number is shown: the repr of a table nested thousands deep recurses.
            quote = (
                f' in quotes ({key} = "..."), not the number {settings[key]!r}' if number else ""
            )
            problems.append(Problem(f"{where}.{key}", "expected a string" + quote))
        # A key of the wrong type is left out (its default stands in) so that the others
        # are still checked: every problem of a target is reported at once. Such a target
        # is only checked, never kept, so it cannot clash with the others.
        typed = {k: v for k in _TARGET_KEYS if isinstance(v := settings.get(k), str)}
        versions = [typed["python"]] if "python" in typed else list(pythons)
        for version in versions[:1] if bad else versions:
            tname = name if len(versions) == 1 else f"{name}-py{version}"
            try:
                target = Target.create(
                    tname,
                    platform_id=typed.get("platform", name),
                    python=version,
                    glibc=typed.get("glibc", DEFAULT_GLIBC),
                    variant=typed.get("variant", "cpu"),
                    where=where,
                )
            except TargetError as exc:
                # With several Pythons, a bad platform or glibc is the same problem for each.
                problems.extend(p for p in exc.problems if p not in problems)
                continue
            if bad:
                continue
            if tname in by_name:
                problems.append(
                    Problem(where, f"target name {tname!r} is also made by {by_name[tname]}")
                )
                continue
            by_name[tname] = where
            env = (target.platform.id, target.python_tuple, target.variant)
            if env in by_env:
                # One lock resolves one set of versions per platform and Python (uv's
                # environments must be disjoint), and a glibc level is a floor: the
                # lower one already admits only wheels the higher one can install.
                problems.append(
                    Problem(
                        where,
                        f"same platform ({target.platform.id}), Python ({target.python}) "
                        f"and variant ({target.variant}) as {by_env[env]}; declare it once "
                        "(with the lowest glibc level both must run on)",
                    )
                )
                continue
            by_env[env] = where
            out.append(target)
    return tuple(out)
