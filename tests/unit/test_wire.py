"""One vocabulary for the batch's Redis data (``analysis_core.wire``): values pinned, no literal copies.

Every name inside a batch's Redis data (stream fields, counters, flags,
outcome fields, statuses) is a constant of ``wire``. The Lua scripts get the
same constants as locals (``scripts.prelude``), so a script that spells a
name as a string literal, a table key (``{status = ...}``) or a field
(``outcome.status``) holds a second copy that could drift: these tests find
such copies in every script, and in the Python modules that run the queue.
The values themselves are pinned, because running batches hold them.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import get_args

import pytest
import redis.asyncio

from analysis_core import scripts, wire
from analysis_operator import producer

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
LUA = "lua5.4"  # tools/system-packages.sh installs it; a missing interpreter fails these tests
SCRIPT_PACKAGES = ("analysis_core",)  # the one folder of scripts, which both images carry

# What a running batch holds; a changed value strands it across an upgrade. Add new names here, never edit one.
STORED = {
    "MSG_ITEM": "item",
    "MSG_ROUND": "round",
    "MSG_ATTEMPT": "attempt",
    "MSG_INPUT": "input",
    "MSG_SINCE": "since",
    "MSG_FEEDBACK": "feedback",
    "MSG_FIRST": "first",
    "COUNT_SUCCEEDED": "succeeded",
    "COUNT_FAILED": "failed",
    "COUNT_RETRIES": "retries",
    "COUNT_RATE_LIMITED": "rate_limited",
    "COUNT_REDELIVERED": "redelivered",
    "COUNT_DEAD_LETTERED": "dead_lettered",
    "COUNT_RERUN": "rerun",
    "COUNT_CHILDREN": "children",
    "COUNT_APPROVED": "approved",
    "COUNT_REJECTED": "rejected",
    "COUNT_EXHAUSTED": "exhausted",
    "COUNT_APPROVED_ROUND": "approved_round_",
    "COUNT_REJECTED_ROUND": "rejected_round_",
    "COUNT_PROVIDER_BATCHES": "provider_batches",
    "COUNT_PROVIDER_BATCHES_ENDED": "provider_batches_ended",
    "USAGE_INPUT_TOKENS": "input_tokens",
    "USAGE_OUTPUT_TOKENS": "output_tokens",
    "USAGE_COST_NUSD": "cost_nusd",
    "USAGE_CACHE_WRITE_TOKENS": "cache_write_tokens",
    "USAGE_CACHE_READ_TOKENS": "cache_read_tokens",
    "FLAG_SUSPENDED": "suspended",
    "FLAG_BUDGET_EXCEEDED": "budget_exceeded",
    "FLAG_RETRY_TOKEN": "retry_token",
    "FLAG_DELETING": "deleting",
    "FLAG_RUN": "run",
    "OUTCOME_STATUS": "status",
    "OUTCOME_ERROR": "error",
    "OUTCOME_ERROR_CLASS": "error_class",
    "OUTCOME_INPUT": "input",
    "OUTCOME_FEEDBACK": "feedback",
    "OUTCOME_OUTPUT_KEY": "output_key",
    "OUTCOME_MODEL": "model",
    "OUTCOME_INPUT_TOKENS": "in",
    "OUTCOME_OUTPUT_TOKENS": "out",
    "OUTCOME_POD": "pod",
    "OUTCOME_DELIVERIES": "deliveries",
    "OUTCOME_APPROVED": "approved",
    "OUTCOME_CLAIMED_MS": "claimed_ms",
    "OUTCOME_CALLED_MS": "called_ms",
    "OUTCOME_SPENT": "spent",
    "CHILD_INPUT_MARK": "#",
    "STATUS_SUCCEEDED": "succeeded",
    "STATUS_REJECTED": "rejected",
    "STATUS_FAILED": "failed",
    "STATUS_RETRY": "retry",
    "STATUS_DEAD": "dead",
    "ROUTE_FIELDS": "fields",
    "ROUTE_GATHER": "gather",
    "ROUTE_INPUT": "input",
    "RELEASE_STREAM": "stream",
    "RELEASE_GATHER": "gather",
    "RELEASE_NONE": "none",
    "COLLECTED_ITEM": "item",
    "COLLECTED_OUTPUT": "output",
    "BEAT_IN_FLIGHT": "in_flight",
    "BEAT_AT": "at",
    "BEAT_POD": "pod",
    "QUOTA_MESSAGE": "refusal",
    "QUOTA_MODEL": "model",
    "QUOTA_SINCE": "since",
    "QUOTA_BACKOFF": "probe_wait_ms",
    "QUOTA_PROBES": "probes",
    "QUOTA_PROBE": "probe",
    "QUOTA_PROBE_UNTIL": "probe_until",
    "ALLOW_REQUESTS": "grant_requests",
    "ALLOW_INPUT": "grant_input",
    "ALLOW_OUTPUT": "grant_output",
    "ALLOW_EPOCH": "grant_epoch",
    "ALLOW_NEXT": "grant_next",
    "ALLOW_PAUSED_UNTIL": "grant_paused_until",
    "ALLOW_HELD": "grant_held",
    "ALLOW_PROBE": "grant_probe",
    "REPORT_SETTLED_INPUT": "settled_input_",
    "REPORT_SETTLED_OUTPUT": "settled_output_",
    "REPORT_PAUSE_UNTIL": "report_pause_until",
    "REPORT_REFUSED": "report_refused",
    "REPORT_REFUSED_MODEL": "report_refused_model",
    "REPORT_REFUSED_AT": "report_refused_at",
    "REPORT_PASSED_AT": "report_passed_at",
    "PB_AT": "prepared_ms",
    "PB_ID": "batch_id",
    "PB_REQUESTS": "request_count",
    "PB_RESERVED_NUSD": "reserved_nusd",
    "PB_RESERVED_TOKENS": "reserved_tokens",
    "PB_PREPARE": "prepare",
    "PB_SUBMITTED": "submitted",
    "PB_ENDED": "ended",
    "CLAIM_FULL": "full",
    "CLAIM_EMPTY": "empty",
    "CLAIM_RETIRED": "retired",
}


def test_the_stored_names_keep_their_values() -> None:
    assert wire.constants() == STORED
    assert (wire.approved_in_round(2), wire.rejected_in_round(0)) == ("approved_round_2", "rejected_round_0")


def test_final_statuses_are_outcome_statuses() -> None:
    assert get_args(producer.FinalStatus) == (wire.STATUS_SUCCEEDED, wire.STATUS_FAILED, wire.STATUS_DEAD)


# ---------------------------------------------------------------- Lua


def lua_scripts() -> dict[str, tuple[str, str]]:
    """Every script of the queue: ``package/name`` -> (package, name)."""
    found = {}
    for package in SCRIPT_PACKAGES:
        for entry in (resources.files(package) / "lua").iterdir():
            if entry.name.endswith(".lua"):
                name = entry.name.removesuffix(".lua")
                found[f"{package}/{name}"] = (package, name)
    return found


def split_lua(source: str) -> tuple[str, list[str]]:
    """The code with comments removed and each string literal replaced by ``""``; and the literals' contents."""
    code: list[str] = []
    strings: list[str] = []
    i = 0
    while i < len(source):
        long = re.match(r"(--)?\[(=*)\[", source[i:])
        if long:  # a long comment or a long string
            end = source.find(f"]{long.group(2)}]", i + long.end())
            assert end >= 0, "an unterminated long bracket"
            if not long.group(1):
                strings.append(source[i + long.end() : end])
                code.append('""')
            i = end + len(long.group(2)) + 2
        elif source.startswith("--", i):
            i = source.find("\n", i) if "\n" in source[i:] else len(source)
        elif source[i] in "'\"":
            quote, j, text = source[i], i + 1, []
            while source[j] != quote:
                if source[j] == "\\":
                    j += 1
                text.append(source[j])
                j += 1
            strings.append("".join(text))
            code.append('""')
            i = j + 1
        else:
            code.append(source[i])
            i += 1
    return "".join(code), strings


_TOKEN = re.compile(r"[A-Za-z_]\w*|\.\.\.?|==|~=|<=|>=|\S")


def lua_names(code: str) -> list[str]:
    """Names that ``code`` uses as table keys (``{name = ...}``) or fields (``t.name``, ``t:name()``)."""
    tokens = _TOKEN.findall(code)
    names, brackets = [], []
    for i, token in enumerate(tokens):
        if token in "{([":
            brackets.append(token)
        elif token in "})]":
            brackets.pop()
        elif re.fullmatch(r"[A-Za-z_]\w*", token) and i > 0:
            before, after = tokens[i - 1], tokens[i + 1] if i + 1 < len(tokens) else ""
            if before in (".", ":") or (brackets[-1:] == ["{"] and before in "{,;" and after == "="):
                names.append(token)
    return names


def lua_drift(source: str) -> list[str]:
    """Every place ``source`` spells a ``wire`` name other than by its constant."""
    code, strings = split_lua(source)
    names = set(wire.constants().values())
    hits = [f"literal '{s}'" for s in strings if s in names]
    hits += [f"key or field {n}" for n in lua_names(code) if n in names]
    return hits


def test_lua_scripts_spell_wire_names_only_as_constants() -> None:
    found = lua_scripts()
    assert {"analysis_core/seed", "analysis_core/complete", "analysis_core/limiter_acquire"} <= set(found)
    drift = {}
    for where, (package, name) in found.items():
        text = (resources.files(package) / "lua" / f"{name}.lua").read_text(encoding="utf-8")
        if hits := lua_drift(text):
            drift[where] = hits
    assert drift == {}, "use the wire constants (e.g. MSG_ITEM, COUNT_FAILED) instead"


def test_the_lua_drift_check_sees_what_it_looks_for() -> None:
    snippet = (
        "-- counts 'failed' in a comment, which is fine\n"
        "local outcome = {status = 'dead', n = 1}\n"
        "if outcome.status == \"succeeded\" then redis.call('HINCRBY', KEYS[1], [[rerun]], 1) end\n"
        "local a, retries = 1, 2\n"  # a local's name, not a key
        "local x = f[MSG_ITEM] .. 'done'\n"
    )
    assert sorted(lua_drift(snippet)) == [
        "key or field status",
        "key or field status",
        "literal 'dead'",
        "literal 'rerun'",
        "literal 'succeeded'",
    ]


def test_every_wire_constant_a_script_uses_exists() -> None:
    """A misspelt constant would be a nil global in Redis; caught here rather than on the path that runs it."""
    known = wire.constants()
    prefixes = "|".join(sorted({name.split("_")[0] for name in known}))
    pattern = re.compile(rf"\b(?:{prefixes})_[A-Z0-9_]+\b")
    unknown = {}
    for where, (package, name) in lua_scripts().items():
        code, _ = split_lua((resources.files(package) / "lua" / f"{name}.lua").read_text(encoding="utf-8"))
        if missing := sorted(set(pattern.findall(code)) - set(known)):
            unknown[where] = missing
    assert unknown == {}


def test_scripts_as_run_declare_their_constants_on_the_first_line_and_compile() -> None:
    lua = shutil.which(LUA)
    assert lua is not None, f"{LUA} is not installed (tools/system-packages.sh installs it)"
    library = scripts.library()
    lines = library.code.splitlines()
    assert lines[0] == f"#!lua name={library.name}"
    assert set(library.starts) == {name for _, name in lua_scripts().values()}
    for where, (package, name) in lua_scripts().items():
        text = (resources.files(package) / "lua" / f"{name}.lua").read_text(encoding="utf-8")
        sent = scripts.source(name)
        assert sent.splitlines()[1:] == text.splitlines()[1:], f"{where}: line numbers must stay those of the file"
        prelude = scripts.prelude(text)
        assert sent == prelude + text
        for constant in re.findall(r"\b[A-Z][A-Z0-9_]*\b", split_lua(text)[0]):
            if constant in wire.constants():
                assert re.search(rf"\b{constant}\b", prelude), f"{where}: {constant} is not declared"
        # In the library, the function's lines are the file's: line k of the file is line start + k - 1.
        start = library.starts[name]
        file_lines = text.rstrip("\n").splitlines()
        assert lines[start - 1] == f"local function fn_{name}(KEYS, ARGV) {prelude}{file_lines[0]}", where
        assert lines[start : start + len(file_lines) - 1] == file_lines[1:], where
        assert library.where(start + len(file_lines) - 1) == f"{name}.lua:{len(file_lines)}"
        assert library.function(name) == f"{library.name}_{name}"
    # Compile only: the text is valid Lua (Redis runs 5.1; nothing here differs for the parser).
    library_code = "\n".join(lines[1:])  # without the shebang, which only Redis reads
    check = subprocess.run(
        [lua, "-e", "assert(load(io.read('a')))"], input=library_code, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stderr


def test_the_library_name_follows_its_code() -> None:
    library = scripts.library()
    assert re.fullmatch(r"analysis_[0-9a-f]{12}", library.name)
    assert library == scripts.library()  # one text per release, so every process calls the same names
    with pytest.raises(KeyError, match=r"no script lua/nonexistent\.lua"):
        scripts.function(None, "nonexistent")  # type: ignore[arg-type]


def test_the_prelude_declares_only_what_a_script_mentions() -> None:
    assert scripts.prelude("return 1") == ""
    assert scripts.prelude("return {f[MSG_ITEM], COUNT_FAILED, KEYS[1]}") == (
        'local COUNT_FAILED, MSG_ITEM = "failed", "item"; '
    )


# ---------------------------------------------------------------- Python

PACKAGES = ("operator/src/analysis_core", "operator/src/analysis_operator", "worker-image/src/analysis_worker")
# The modules that talk to Redis: the queue's shared part and its two sides. Every other module goes through them.
QUEUE_MODULES = (
    "operator/src/analysis_core/queue.py",
    "operator/src/analysis_core/keys.py",
    "operator/src/analysis_core/scripts.py",
    "operator/src/analysis_operator/producer.py",
    "worker-image/src/analysis_worker/consumer.py",
    "worker-image/src/analysis_worker/ratelimit.py",
)
# Modules that use the queue (they import one of these) are checked where a name goes.
QUEUE_IMPORTS = {
    "analysis_core.queue",
    "analysis_core.keys",
    "analysis_core.wire",
    "analysis_operator.producer",
    "analysis_worker.consumer",
}
# Where a word of the vocabulary names something else: (module, word) -> why; "key:" words only as a dict key.
ELSEWHERE = {
    ("analysis_core/plan.py", "retry"): "the plan's field for spec.stages[].retry, regrouped by the version-1 upgrade",
    ("analysis_core/queue.py", "retry"): "redis-py's connection option",
    ("analysis_operator/builders.py", "run"): "a key of the digest that names a Job (changing it renames Jobs)",
    ("analysis_operator/handlers.py", "status"): "a Kubernetes object's status",
    ("analysis_operator/accounts.py", "status"): "an AnalysisProvider's status, and its conditions'",
    ("analysis_operator/teardown.py", "status"): "a Kubernetes object's status",
    ("analysis_operator/reconciler.py", "status"): "a Kubernetes object's status, and a result row's",
    **{
        ("analysis_operator/reconciler.py", w): "a result row's field or status (results.py)"
        for w in ("item", "error", "failed", "dead")
    },
    ("analysis_operator/status.py", "status"): "a condition's status",
    **{
        ("analysis_operator/status.py", f"key:{w}"): "a field of the CRD's status"
        for w in ("succeeded", "failed", "retries", "approved", "rejected", "exhausted", "submitted", "ended")
    },
    ("analysis_worker/routing.py", "approved"): "a judge's verdict, as the model writes it",
    ("analysis_worker/routing.py", "feedback"): "a judge's verdict, as the model writes it",
}
# Modules that use the queue's types but none of its names.
UNCHECKED = {"analysis_operator/export.py": "writes result rows from FinalRecord attributes; its words are the rows'"}
_HASH_COMMANDS = {"hset", "hsetnx", "hget", "hmget", "hdel", "hexists", "hincrby"}


def _for_logs(tree: ast.AST) -> set[int]:
    """Nodes that only make log fields: an ``extra=`` argument, and dicts assigned to names it uses."""
    skipped: set[int] = set()
    scopes = [n for n in ast.walk(tree) if isinstance(n, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef)]
    for scope in scopes:
        extras = [
            kw.value for n in ast.walk(scope) if isinstance(n, ast.Call) for kw in n.keywords if kw.arg == "extra"
        ]
        names = {n.id for value in extras for n in ast.walk(value) if isinstance(n, ast.Name)}
        values = list(extras)
        grew = True
        while grew:  # fields = {...}; details = {**fields, ...}; extra={"fields": details}
            grew = False
            for n in ast.walk(scope):
                assigned = isinstance(n, ast.Assign) and isinstance(n.value, ast.Dict) and n.value not in values
                if assigned and any(isinstance(t, ast.Name) and t.id in names for t in n.targets):
                    values.append(n.value)
                    names |= {m.id for m in ast.walk(n.value) if isinstance(m, ast.Name)}
                    grew = True
        skipped |= {id(m) for value in values for m in ast.walk(value)}
    return skipped


def named_literals(tree: ast.AST, *, everywhere: bool = False) -> list[tuple[int, str, bool]]:
    """String literals where a name goes, as (line, source, a dict key?): dict keys and values, ``.get``/``.pop``
    keys, subscripts, comparisons, hash fields; with ``everywhere``, every string literal but docstrings.

    Literals inside ``Literal[...]`` are types, which mypy checks; a script's name (``scripts.function(client,
    "retry")``) names a file; log fields are the logs' own vocabulary.
    """
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    logs = set() if everywhere else _for_logs(tree)
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in docstrings | logs:
            continue
        parent = parents.get(node)
        if isinstance(parent, ast.JoinedStr):  # f"approved_round_{n}" where a name goes
            node, parent = parent, parents.get(parent)
        if isinstance(parent, ast.Tuple | ast.List | ast.Set) and isinstance(
            parents.get(parent), ast.Compare | ast.Subscript
        ):
            node, parent = parent, parents.get(parent)
        call_attr = parent.func.attr if isinstance(parent, ast.Call) and isinstance(parent.func, ast.Attribute) else ""
        is_key = isinstance(parent, ast.Dict) and node in parent.keys
        named = (
            everywhere
            or isinstance(parent, ast.Dict)
            or (call_attr in ("get", "pop", "setdefault") and parent.args[:1] == [node])
            or (call_attr in _HASH_COMMANDS and node in parent.args)
            or (isinstance(parent, ast.Subscript) and parent.slice is node)
            or isinstance(parent, ast.Compare)
        )
        literal_type = isinstance(parent, ast.Subscript) and ast.unparse(parent.value) == "Literal"
        if named and not literal_type and call_attr != "function":
            found.append((getattr(node, "lineno", 0), ast.unparse(node), is_key))
    return found


def python_drift(path: str, source: str, *, everywhere: bool = False) -> list[str]:
    """Every literal of ``source`` that spells a ``wire`` name; ``path`` as in ``ELSEWHERE``."""
    names = set(wire.constants().values())
    prefixes = [n for n in names if n.endswith("_")]
    hits = []
    for line, literal, is_key in named_literals(ast.parse(source), everywhere=everywhere):
        words = set(re.findall(r"[\"']([^\"'{]*)", literal))
        drifted = {w for w in words if w in names or any(w.startswith(p) for p in prefixes)}
        hits += [
            (line, w)
            for w in drifted
            if (path, w) not in ELSEWHERE and not (is_key and (path, f"key:{w}") in ELSEWHERE)
        ]
    return [f"{path}:{line}: {word!r}" for line, word in sorted(hits)]


def modules() -> dict[str, str]:
    """Every module of the three runtime packages: path as in ``ELSEWHERE`` -> source."""
    return {
        f"{Path(package).name}/{p.relative_to(ROOT / package)}": p.read_text(encoding="utf-8")
        for package in PACKAGES
        for p in sorted((ROOT / package).rglob("*.py"))
    }


def imports(source: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def short(path: str) -> str:
    return path.split("/src/", 1)[1]


def test_the_queue_modules_spell_wire_names_only_as_constants() -> None:
    drift = [
        hit for path in QUEUE_MODULES for hit in python_drift(short(path), (ROOT / path).read_text(), everywhere=True)
    ]
    assert drift == [], "use the analysis_core.wire constants instead"


def test_modules_that_use_the_queue_spell_wire_names_only_as_constants() -> None:
    checked, drift = [], []
    for path, source in modules().items():
        if path in UNCHECKED or path.endswith("/wire.py") or not imports(source) & QUEUE_IMPORTS:
            continue
        checked.append(path)
        drift += python_drift(path, source)
    assert {"analysis_worker/loop.py", "analysis_operator/status.py", "analysis_operator/reconciler.py"} <= set(checked)
    assert drift == [], "use the analysis_core.wire constants instead (or say in ELSEWHERE why a word means else)"


def test_the_python_drift_check_sees_what_it_looks_for() -> None:
    snippet = (
        '"""A docstring about dead_lettered counters."""\n'
        'Status = Literal["succeeded", "failed"]\n'
        'outcome = {"status": "dead", wire.OUTCOME_INPUT: x}\n'
        'n = counters.get("dead_lettered", 0) + counters["rerun"]\n'
        'if flags.get(wire.FLAG_RUN) in ("failed", other): client.hset(key, "retry_token", t)\n'
        'increments = {f"approved_round_{n}": 1}\n'
        'await scripts.function(client, "retry")(keys=[k], args=["done"])\n'
        'fields = {"item": item}\n'
        'log.info("failed", extra={"fields": {**fields, "error": why}})\n'
    )
    assert python_drift("x.py", snippet) == [
        "x.py:3: 'dead'",
        "x.py:3: 'status'",
        "x.py:4: 'dead_lettered'",
        "x.py:4: 'rerun'",
        "x.py:5: 'failed'",
        "x.py:5: 'retry_token'",
        "x.py:6: 'approved_round_'",
    ]
    everywhere = python_drift("x.py", snippet, everywhere=True)
    assert everywhere == sorted(
        [*python_drift("x.py", snippet), "x.py:8: 'item'", "x.py:9: 'error'", "x.py:9: 'failed'", "x.py:9: 'fields'"]
    )


def test_only_the_queue_modules_talk_to_redis() -> None:
    """The reconciler, the worker loop and the rest call the producer's or the consumer's functions instead."""
    others = (
        "get",
        "set",
        "delete",
        "exists",
        "append",
        "close",
        "aclose",
        "info",
        "time",
        "wait",
        "shutdown",
        "digest",
        "from_url",
        "copy",
        "sort",
        "keys",
        "type",
        "lock",
        "echo",
        "watch",
    )
    commands = {name for name in dir(redis.asyncio.Redis) if not name.startswith("_")} - set(others)
    assert {"hset", "hincrby", "mget", "xadd", "scan_iter", "unlink", "pipeline", "register_script"} <= commands
    queue_modules = {short(path) for path in QUEUE_MODULES}
    calls = [
        f"{path}:{node.lineno}: {node.func.attr}"
        for path, source in modules().items()
        if path not in queue_modules
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in commands
    ]
    assert calls == []
