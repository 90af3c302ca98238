"""Every hook is called by pluggy: its order, its wrappers, and the plugin named when one fails.

For each hook, six plugins are loaded through ``DBINIT_PLUGINS`` in this
order: ``p_first`` (``tryfirst``), ``p_a``, ``p_b``, ``p_last`` (``trylast``),
``p_wrap`` (a ``wrapper=True`` that logs around the call and adds its own
result) and ``p_old`` (an old-style ``hookwrapper=True`` that logs and drops
``p_a``'s result). pluggy's order, as ``dbinit.hookspecs`` states it, is then:
``p_old`` outermost (the last registered wrapper), ``p_wrap``, then
``p_first``, ``p_b``, ``p_a`` (the last registered first), ``p_last``. Each
implementation appends to ``calls.log``; what each contributed is read from
what a user sees (``dbinit check --list``, ``dbinit plugins``, ``dbinit help``,
exit codes and messages).
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from tests.plugins.databases import Result, TestDatabase, run_dbinit

ORDER = ("p_first", "p_a", "p_b", "p_last", "p_wrap", "p_old")
CALLED = ["old:before", "wrap:before", "p_first", "p_b", "p_a", "p_last", "wrap:after", "old:after"]

HELPER = '''
import contextlib
from pathlib import Path

from dbinit.checks import Info, check
from dbinit.management.base import BaseCommand
from dbinit.strategies import Strategy


def log(hook, line):
    with Path("calls.log").open("a") as handle:
        handle.write(f"{hook} {line}\\n")


def _check(name):
    @check(f"{name}.C001", f"{name}_check", tags=("sem",), requires_database=False)
    def checked(facts):
        yield Info(f"{name} ran", id=f"{name}.C001")
    return checked


def _command(name):
    class Command(BaseCommand):
        help = f"the command of {name}"

        def handle(self, **options):
            self.stdout.write(f"command of {name}")
    return Command


class Context:
    def __init__(self, name, hook):
        self.name = name
        self.hook = hook

    def __enter__(self):
        log(self.hook, f"enter {self.name}")

    def __exit__(self, *exc):
        log(self.hook, f"exit {self.name}")


def _endpoint(name):
    async def endpoint(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": ('{"endpoint": "%s"}' % name).encode()})
    return endpoint


def contribution(hook, name):
    return {
        "dbinit_checks": lambda: [_check(name)],
        "dbinit_strategies": lambda: [Strategy(f"s_{name}", lambda context: context.upgrade(), f"of {name}")],
        "dbinit_commands": lambda: {f"cmd-{name}": _command(name)},
        "dbinit_migration_context": lambda: Context(name, hook),
        "dbinit_operation": lambda: Context(name, hook),
        "dbinit_asgi_endpoints": lambda: {f"/{name}": _endpoint(name)},
    }.get(hook, lambda: None)()


def is_of(hook, item, name):
    return {
        "dbinit_checks": lambda: item.id == f"{name}.C001",
        "dbinit_strategies": lambda: item.name == f"s_{name}",
        "dbinit_commands": lambda: item == f"cmd-{name}",
        "dbinit_migration_context": lambda: item.name == name,
        "dbinit_operation": lambda: item.name == name,
        "dbinit_asgi_endpoints": lambda: item == f"/{name}",
    }.get(hook, lambda: False)()


def added(hook, results, name):
    """What p_wrap returns: the list it got, plus its own result."""
    mine = contribution(hook, name)
    return results + ([mine] if mine is not None else [])


def dropped(hook, results, name):
    """What p_old forces: every result rebuilt without what belongs to plugin `name`."""
    if hook in ("dbinit_commands", "dbinit_asgi_endpoints"):
        return [{k: v for k, v in r.items() if not is_of(hook, k, name)} for r in results]
    if hook in ("dbinit_migration_context", "dbinit_operation"):
        return [r for r in results if not is_of(hook, r, name)]
    return [[i for i in r if not is_of(hook, i, name)] for r in results]
'''

PLAIN = '''
from dbinit import hookimpl
from semhelp import contribution, log

@hookimpl{options}
def {hook}(settings):
    log("{hook}", "{name}")
    return contribution("{hook}", "{name}")
'''

WRAPPER = '''
import time
from dbinit import hookimpl
from semhelp import added, log

@hookimpl(wrapper=True)
def {hook}(settings):
    log("{hook}", "wrap:before")
    started = time.perf_counter()
    results = yield
    log("{hook}", "wrap:after")
    log("{hook}", f"wrap:took {time.perf_counter() - started >= 0}")
    return added("{hook}", results, "{name}")
'''

HOOKWRAPPER = '''
from dbinit import hookimpl
from semhelp import dropped, log

@hookimpl(hookwrapper=True)
def {hook}(settings):
    log("{hook}", "old:before")
    outcome = yield
    log("{hook}", "old:after")
    outcome.force_result(dropped("{hook}", outcome.get_result(), "p_a"))
'''

RAISING = '''
from dbinit import hookimpl

@hookimpl
def {hook}(settings):
    raise RuntimeError("{name} is broken")
'''

RAISING_WRAPPER = '''
from dbinit import hookimpl

@hookimpl(wrapper=True)
def {hook}(settings):
    results = yield
    raise LookupError("{name} broke after the yield")
'''


def _plugins(tmp_path: Path, hook: str, sources: dict[str, str]) -> dict[str, str]:
    folder = tmp_path / "sem_plugins"
    folder.mkdir(exist_ok=True)
    (folder / "semhelp.py").write_text(HELPER)
    for name, source in sources.items():
        code = source.replace("{options}", "").replace("{hook}", hook).replace("{name}", name)
        (folder / f"{name}.py").write_text(textwrap.dedent(code))
    return {
        "PYTHONPATH": f"{folder}{os.pathsep}{Path(__file__).resolve().parents[1]}",
        "DBINIT_PLUGINS": ",".join(sources),
    }


def _standard(tmp_path: Path, hook: str) -> dict[str, str]:
    sources = {
        "p_first": PLAIN.replace("{options}", "(tryfirst=True)"),
        "p_a": PLAIN.replace("{options}", ""),
        "p_b": PLAIN.replace("{options}", ""),
        "p_last": PLAIN.replace("{options}", "(trylast=True)"),
        "p_wrap": WRAPPER,
        "p_old": HOOKWRAPPER,
    }
    assert tuple(sources) == ORDER
    return _plugins(tmp_path, hook, sources)


def _calls(project: Path, hook: str) -> list[str]:
    lines = (project / "calls.log").read_text().splitlines()
    return [line.split(" ", 1)[1] for line in lines if line.split(" ", 1)[0] == hook]


def _plugins_json(project: Path, env: dict[str, str], database: TestDatabase) -> dict[str, dict[str, object]]:
    listed = run_dbinit("plugins", "--format", "json", cwd=project, DATABASE_URL=database.url, **env)
    assert listed.returncode == 0, listed.output
    return {row["name"]: row for row in json.loads(listed.stdout)}


def _assert_named(result: Result, plugin: str, code: int, what: str) -> None:
    assert result.returncode == code, result.output
    assert f"plugin {plugin!r}" in result.stderr, result.stderr
    assert what in result.stderr, result.stderr


def _failures(tmp_path: Path, project: Path, hook: str, *args: str, code: int = 1) -> None:
    """A raising implementation, then a raising wrapper, each named with the exit code (a new database)."""
    for name, source, what in [
        ("p_raises", RAISING, "RuntimeError: p_raises is broken"),
        ("p_wrapper_raises", RAISING_WRAPPER, "LookupError: p_wrapper_raises broke after the yield"),
    ]:
        (tmp_path / name).mkdir()
        env = _plugins(tmp_path / name, hook, {"p_a": PLAIN, name: source})
        url = f"sqlite+aiosqlite:///{tmp_path / name / 'db.sqlite3'}"
        if hook == "dbinit_verify_finished":
            assert run_dbinit("migrate", cwd=project, DATABASE_URL=url).returncode == 0
        result = run_dbinit(*args, cwd=project, DATABASE_URL=url, **env)
        _assert_named(result, name, code, what)


def test_dbinit_checks_order_wrappers_and_failures(
    tmp_path: Path, project: Path, sqlite_database: TestDatabase
) -> None:
    hook = "dbinit_checks"
    env = _standard(tmp_path, hook)
    listed = run_dbinit(
        "check", "--list", "--format", "json", cwd=project, DATABASE_URL=sqlite_database.url, **env
    )
    assert listed.returncode == 0, listed.output
    assert _calls(project, hook) == [*CALLED[:6], "wrap:after", "wrap:took True", "old:after"]
    rows = [(r["id"], r["plugin"]) for r in json.loads(listed.stdout)]
    builtins = [(f"dbinit.E00{i}", "dbinit.plugins.checks") for i in range(1, 7)]
    # tryfirst: p_first (registered last of the two) before the built-ins; then LIFO; p_a dropped
    # by p_old (which rebuilt every result: still each check's own plugin); p_wrap's added last
    assert rows == [
        ("p_first.C001", "p_first"),
        *builtins,
        ("p_b.C001", "p_b"),
        ("p_last.C001", "p_last"),
        ("p_wrap.C001", "p_wrap"),
        ("dbinit.W010", "dbinit.plugins.checks"),  # `dbinit check`'s own, after every plugin's
        ("dbinit.L000", "dbinit.plugins.lint"),
    ]
    ran = run_dbinit(
        "check", "--tag", "sem", "--format", "json", cwd=project, DATABASE_URL=sqlite_database.url, **env
    )
    assert ran.returncode == 0, ran.output
    assert [c["id"] for c in json.loads(ran.stdout)["checks"]] == [
        "p_first.C001", "p_b.C001", "p_last.C001", "p_wrap.C001"
    ]
    _failures(tmp_path, project, hook, "check", "--list")


def test_dbinit_strategies_order_wrappers_and_failures(
    tmp_path: Path, project: Path, sqlite_database: TestDatabase
) -> None:
    hook = "dbinit_strategies"
    env = _standard(tmp_path, hook)
    rows = _plugins_json(project, env, sqlite_database)
    assert _calls(project, hook) == [*CALLED[:6], "wrap:after", "wrap:took True", "old:after"]
    assert {name: rows[name]["strategies"] for name in ORDER} == {
        "p_first": ["s_p_first"], "p_a": [], "p_b": ["s_p_b"], "p_last": ["s_p_last"],
        "p_wrap": ["s_p_wrap"], "p_old": [],
    }
    assert rows["dbinit.plugins.strategies"]["strategies"] == ["upgrade", "recreate", "command"]
    assert {"hook": hook, "tryfirst": True, "trylast": False, "wrapper": False, "hookwrapper": False} in (
        rows["p_first"]["hookimpls"]
    )
    assert rows["p_old"]["hookimpls"][0]["hookwrapper"] is True
    added = run_dbinit("migrate", "--strategy", "s_p_wrap", "--format", "json", cwd=project,
                       DATABASE_URL=sqlite_database.url, **env)
    assert added.returncode == 0, added.output
    assert json.loads(added.stdout)["strategy"] == "s_p_wrap"
    gone = run_dbinit("migrate", "--strategy", "s_p_a", cwd=project, DATABASE_URL=sqlite_database.url, **env)
    assert gone.returncode == 2 and "unknown migration strategy 's_p_a'" in gone.stderr, gone.output
    _failures(tmp_path, project, hook, "migrate", "--plan")


def test_dbinit_commands_order_wrappers_and_failures(
    tmp_path: Path, project: Path, sqlite_database: TestDatabase
) -> None:
    hook = "dbinit_commands"
    env = _standard(tmp_path, hook)
    helped = run_dbinit("help", cwd=project, DATABASE_URL=sqlite_database.url, **env)
    assert helped.returncode == 0, helped.output
    assert _calls(project, hook) == [*CALLED[:6], "wrap:after", "wrap:took True", "old:after"]
    listed = [line.split() for line in helped.stdout.splitlines() if "cmd-" in line]
    assert listed == [
        ["cmd-p_b", "[p_b]"],
        ["cmd-p_first", "[p_first]"],
        ["cmd-p_last", "[p_last]"],
        ["cmd-p_wrap", "[p_wrap]"],
    ]
    ran = run_dbinit("cmd-p_wrap", cwd=project, DATABASE_URL=sqlite_database.url, **env)
    assert ran.returncode == 0 and ran.stdout.strip() == "command of p_wrap", ran.output
    gone = run_dbinit("cmd-p_a", cwd=project, DATABASE_URL=sqlite_database.url, **env)
    assert gone.returncode == 2 and "Unknown command: 'cmd-p_a'" in gone.stderr, gone.output
    _failures(tmp_path, project, hook, "help", code=1)


def test_dbinit_verify_finished_order_wrappers_and_failures(
    tmp_path: Path, project: Path, sqlite_database: TestDatabase
) -> None:
    hook = "dbinit_verify_finished"
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url).returncode == 0
    env = _standard(tmp_path, hook)
    verified = run_dbinit("verify", cwd=project, DATABASE_URL=sqlite_database.url, **env)
    assert verified.returncode == 0, verified.output
    assert _calls(project, hook) == [*CALLED[:6], "wrap:after", "wrap:took True", "old:after"]
    _failures(tmp_path, project, hook, "verify")


def test_dbinit_migrate_finished_order_wrappers_and_failures(
    tmp_path: Path, project: Path, sqlite_database: TestDatabase
) -> None:
    hook = "dbinit_migrate_finished"
    env = _standard(tmp_path, hook)
    migrated = run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url, **env)
    assert migrated.returncode == 0, migrated.output
    assert _calls(project, hook) == [*CALLED[:6], "wrap:after", "wrap:took True", "old:after"]
    _failures(tmp_path, project, hook, "migrate")


def test_dbinit_migration_context_order_wrappers_and_failures(
    tmp_path: Path, project: Path, sqlite_database: TestDatabase
) -> None:
    hook = "dbinit_migration_context"
    env = _standard(tmp_path, hook)
    migrated = run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url, **env)
    assert migrated.returncode == 0, migrated.output
    calls = _calls(project, hook)
    assert calls[:9] == [*CALLED[:6], "wrap:after", "wrap:took True", "old:after"]
    # the results' order, the first outermost: p_a's context dropped by p_old, p_wrap's added
    entered = ["p_first", "p_b", "p_last", "p_wrap"]
    assert calls[9:] == [f"enter {n}" for n in entered] + [f"exit {n}" for n in reversed(entered)]
    # a failing context hook is a configuration error (exit 2), naming the plugin
    _failures(tmp_path, project, hook, "migrate", code=2)


def test_dbinit_operation_order_wrappers_and_failures(
    tmp_path: Path, project: Path, sqlite_database: TestDatabase
) -> None:
    hook = "dbinit_operation"
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url).returncode == 0
    env = _standard(tmp_path, hook)
    verified = run_dbinit("verify", cwd=project, DATABASE_URL=sqlite_database.url, **env)
    assert verified.returncode == 0, verified.output
    calls = _calls(project, hook)
    assert calls[:9] == [*CALLED[:6], "wrap:after", "wrap:took True", "old:after"]
    entered = ["p_first", "p_b", "p_last", "p_wrap"]  # the results' order, the first outermost
    assert calls[9:] == [f"enter {n}" for n in entered] + [f"exit {n}" for n in reversed(entered)]
    _failures(tmp_path, project, hook, "verify")


GATE = """
import asyncio, json, sys
from dbinit.asgi import DatabaseGate
from dbinit.settings import load_settings
from tests.test_asgi import drive_lifespan, http_get


async def app(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'{"app": true}'})


async def main():
    wrapped = DatabaseGate(load_settings()).wrap(app)
    sent, _error = await drive_lifespan(wrapped)
    served = {path: (await http_get(wrapped, path))[1] for path in sys.argv[1:]}
    print(json.dumps({"started": sent[0]["type"], "message": sent[-1].get("message"), "served": served}))


asyncio.run(main())
"""


def _gate(project: Path, env: dict[str, str], url: str, *paths: str) -> dict[str, object]:
    import subprocess
    import sys

    from tests.plugins.databases import clean_env

    proc = subprocess.run([sys.executable, "-c", GATE, *paths], cwd=project, capture_output=True, text=True,
                          env=clean_env(DATABASE_URL=url, **env), timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_dbinit_asgi_endpoints_order_wrappers_and_failures(
    tmp_path: Path, project: Path, sqlite_database: TestDatabase
) -> None:
    hook = "dbinit_asgi_endpoints"
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url).returncode == 0
    env = _standard(tmp_path, hook)
    paths = [f"/{name}" for name in ORDER]
    gate = _gate(project, env, sqlite_database.url, *paths)
    assert gate["started"] == "lifespan.startup.complete", gate
    assert _calls(project, hook) == [*CALLED[:6], "wrap:after", "wrap:took True", "old:after"]
    assert gate["served"] == {
        "/p_first": {"endpoint": "p_first"}, "/p_a": {"app": True},  # p_a's dropped by p_old
        "/p_b": {"endpoint": "p_b"}, "/p_last": {"endpoint": "p_last"},
        "/p_wrap": {"endpoint": "p_wrap"}, "/p_old": {"app": True},
    }
    for name, source, what in [
        ("p_raises", RAISING, "RuntimeError: p_raises is broken"),
        ("p_wrapper_raises", RAISING_WRAPPER, "LookupError: p_wrapper_raises broke after the yield"),
    ]:
        (tmp_path / name).mkdir()
        failing = _plugins(tmp_path / name, hook, {"p_a": PLAIN, name: source})
        failed = _gate(project, failing, sqlite_database.url)
        assert failed["started"] == "lifespan.startup.failed", failed
        assert f"plugin {name!r}" in str(failed["message"]) and what in str(failed["message"]), failed


@pytest.mark.parametrize(
    ("source", "plugin", "expected"),
    [
        (  # a wrapper that returns nothing instead of the list
            "from dbinit import hookimpl\n@hookimpl(wrapper=True)\ndef dbinit_checks():\n    yield\n",
            "p_bad",
            "the dbinit_checks wrapper returned NoneType, not the list of results",
        ),
        (  # a wrapper that adds a result that is not a sequence
            "from dbinit import hookimpl\n@hookimpl(wrapper=True)\ndef dbinit_checks():\n"
            "    results = yield\n    return [*results, 42]\n",
            "p_bad",
            "dbinit_checks returned int, not a sequence of Check",
        ),
        (  # a plain implementation whose result is not a sequence
            "from dbinit import hookimpl\n@hookimpl\ndef dbinit_checks():\n    return 42\n",
            "p_bad",
            "dbinit_checks returned int, not a sequence of Check",
        ),
        (  # a wrapper that never yields
            "from dbinit import hookimpl\n@hookimpl(wrapper=True)\ndef dbinit_checks():\n"
            "    return []\n    yield\n",
            "p_bad",
            "the dbinit_checks wrapper did not yield",
        ),
    ],
    ids=["wrapper-returns-none", "wrapper-adds-non-sequence", "impl-returns-int", "wrapper-no-yield"],
)
def test_dbinit_checks_contract_broken_names_the_plugin(
    tmp_path: Path, project: Path, sqlite_database: TestDatabase, source: str, plugin: str, expected: str
) -> None:
    env = _plugins(tmp_path, "dbinit_checks", {"p_a": PLAIN, plugin: source})
    result = run_dbinit(
        "check", "--list", "--format", "json", cwd=project, DATABASE_URL=sqlite_database.url, **env
    )
    assert result.returncode in (1, 2), result.output
    assert f"plugin {plugin!r}" in result.stderr and expected in result.stderr, result.stderr
    if result.returncode == 2:
        assert json.loads(result.stdout)["ok"] is False


def test_dbinit_commands_duplicate_rebuilt_by_a_wrapper_names_the_later_plugin(
    tmp_path: Path, project: Path, sqlite_database: TestDatabase
) -> None:
    clash = (
        "from dbinit import hookimpl\n@hookimpl\ndef dbinit_commands():\n"
        "    return {'verify': 'dbinit.commands.verify'}\n"
    )
    rebuild = (
        "from dbinit import hookimpl\n@hookimpl(wrapper=True)\ndef dbinit_commands():\n"
        "    results = yield\n    return [dict(r) for r in reversed(results)]\n"
    )
    env = _plugins(tmp_path, "dbinit_commands", {"p_clash": clash, "p_rebuild": rebuild})
    result = run_dbinit("help", cwd=project, DATABASE_URL=sqlite_database.url, **env)
    assert result.returncode == 2, result.output
    assert (
        "plugin 'p_clash': command 'verify' is already provided by plugin 'dbinit.plugins.commands'"
        in result.stderr
    )
