"""A batch's Redis user: its rules, and that they cover exactly what the worker's code and functions run."""

import ast
import hashlib
import re
from pathlib import Path

import pytest

from analysis_core import keys, scripts, tenancy

pytestmark = pytest.mark.unit

WORKER = Path(__file__).resolve().parents[2] / "worker-image/src/analysis_worker"
# redis-py's method -> the command an ACL names, where they differ.
METHOD_COMMANDS = {"xgroup_create": "xgroup|create", "xinfo_groups": "xinfo|groups", "xpending_range": "xpending"}
NOT_COMMANDS = {"aclose", "close", "pipeline", "execute", "register_script"}


def worker_calls() -> tuple[set[str], set[str]]:
    """The Redis commands the worker's modules send themselves, and the functions they call by name."""
    commands, functions = set(), set()
    for path in WORKER.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            target = node.func.value
            receiver = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
            if node.func.attr == "function" and receiver == "scripts":
                functions.add(ast.literal_eval(node.args[1]))
            elif receiver in ("client", "blocking", "pipe", "redis") and node.func.attr not in NOT_COMMANDS:
                commands.add(METHOD_COMMANDS.get(node.func.attr, node.func.attr))
    return commands, functions


def test_a_batch_user_may_run_exactly_what_the_worker_and_its_functions_run() -> None:
    commands, functions = worker_calls()
    assert functions == set(tenancy.WORKER_FUNCTIONS)
    assert {"hget", "set", "xread", "xreadgroup", "xgroup|create"} <= commands  # the scan sees its own commands
    assert commands <= set(tenancy.WORKER_COMMANDS)
    allowed = set(tenancy.commands())
    assert scripts.commands(*tenancy.WORKER_FUNCTIONS) <= allowed
    # The operator's functions (seeding, grants, re-runs) are not the worker's, and some run what no worker may.
    assert not set(tenancy.WORKER_FUNCTIONS) & {"seed", "account_grant", "account_give", "rerun", "snapshot"}


def test_every_command_a_script_runs_is_spelled_as_a_literal() -> None:
    # An ACL can list only commands that can be read off the scripts.
    for name in scripts.names():
        text = scripts.source(name)
        assert len(re.findall(r"redis\.p?call\(", text)) == len(scripts._CALL.findall(text)), name


def test_the_rules_confine_the_user_to_its_batch_and_leave_out_lua_and_administration() -> None:
    uid = "4c1f9d2e-0b7a-4f55-9a3e-2d6c1e8b7a90"
    secret = tenancy.password("admin", uid)
    rules = tenancy.rules(uid, secret)
    assert rules[:2] == ["reset", "on"]  # from scratch: asserting it again changes nothing
    assert [r for r in rules if r.startswith("~")] == [f"~{keys.BatchKeys(uid).tag}:*"]
    assert [r for r in rules if r.startswith("#")] == [f"#{hashlib.sha256(secret.encode()).hexdigest()}"]
    assert secret not in " ".join(rules)  # Redis gets its hash only
    granted = {r[1:] for r in rules if r.startswith("+")}
    assert "fcall" in granted
    for never in ("eval", "evalsha", "script", "function", "flushall", "flushdb", "config", "keys", "scan", "acl"):
        assert not [g for g in granted if g == never or g.startswith(never + "|")], never
    assert not [g for g in granted if g.startswith("@")]  # commands, never categories
    assert rules.index("-@all") < min(rules.index(f"+{g}") for g in granted)


def test_passwords_are_per_batch_stable_and_say_nothing_of_the_admin_password() -> None:
    a = tenancy.password("admin-secret", "uid-a")
    assert a == tenancy.password("admin-secret", "uid-a")
    assert a != tenancy.password("admin-secret", "uid-b")
    assert a != tenancy.password("another-admin", "uid-a")
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", a)
    assert tenancy.username("uid-a") == "analysis-batch-uid-a"
