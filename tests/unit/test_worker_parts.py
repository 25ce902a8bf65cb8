"""Pure parts of the worker and the shared core: keys, templates, configuration, plan."""

import asyncio
import io
import json
import logging
import re
from pathlib import Path

import jinja2
import jinja2.sandbox
import pytest
import yaml

from analysis_core import env, keys, plan, tenancy
from analysis_core.api import v1alpha1
from analysis_worker import config, logs, templates

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_every_key_of_a_batch_shares_its_hash_tag() -> None:
    k = keys.BatchKeys("0b9c-uid")
    names = [
        k.stream("a"),
        k.delayed("a"),
        k.counts("a"),
        k.dead("a"),
        k.health("a", "pod"),
        k.limiter("a", "req"),
        k.outcomes,
        k.results,
        k.sealed,
        k.seeded,
    ]
    assert all(name.startswith("{0b9c-uid}:") for name in names)
    assert len(set(names)) == len(names)


def test_idempotency_keys_round_trip_even_for_fanned_out_items() -> None:
    k = keys.BatchKeys("uid-1")
    key = k.idem("analyze", "semis/AI chips/NVDA", 2, 3)
    assert key == "uid-1/analyze/semis/AI chips/NVDA/2/3"
    assert keys.parse_idem(key) == keys.Idem("uid-1", "analyze", "semis/AI chips/NVDA", 2, 3)


def test_templates_see_the_documented_variables() -> None:
    text = templates.render(
        "{{ item }} in {{ vars.language }} after {{ input }}{% if feedback %}; fix: {{ feedback }} "
        "(round {{ round }}, attempt {{ attempt }}){% endif %}",
        item="NVDA",
        input="draft",
        vars={"language": "en"},
        feedback="cite sources",
        round=1,
        attempt=2,
    )
    assert text == "NVDA in en after draft; fix: cite sources (round 1, attempt 2)"
    assert templates.render("{{ feedback }}", item="x") == ""


def test_templates_refuse_unknown_variables_and_python_internals() -> None:
    with pytest.raises(templates.TemplateError, match="unknown variable"):
        templates.render("{{ itme }}", item="x")
    with pytest.raises(templates.TemplateError, match="syntax"):
        templates.render("{% if %}", item="x")
    with pytest.raises(templates.TemplateError):
        templates.render("{{ item.__class__.__mro__[1].__subclasses__() }}", item="x")


@pytest.mark.parametrize(
    "source",
    [
        "Analyse {{ item }}",
        "{{ item }}",
        "",
        "no variables at all\r\nacross lines\n",
        "a {{- item -}} b\n",
        "{# a comment #}{{ vars.topic }}: {{ item }} ({{ round }}/{{ attempt }}) {{ input }} {{ feedback }}",
        "{% raw %}{{ item }}{% endraw %} {{ item }}",
        "{{ vars.missing }}",  # not there: Jinja's error
        "{{ vars.items }}",  # the dict's method to Jinja, not the key
        "{{ item | upper }} {{ vars['topic'] }} {% if round %}r{% endif %}",  # not plain: Jinja renders it
        "{{item}}{{ vars.topic}}\t{{\n  input\n}}}} stray braces } { {",
        "windows\r\nand old macs\rlines {{ item }}\r\n",
        "{{ item -}}  trimmed {{+ item }}",
        "{{ unknown }} {{ item }}",
        "{{ item }",
    ],
)
def test_plain_templates_render_as_jinja_does(source: str) -> None:
    """Templates that only put variables into text skip Jinja's context; the text is Jinja's to the character."""
    variables = {
        "item": "NVDA",
        "input": "draft",
        "vars": {"topic": "chips", "items": "a key named items"},
        "feedback": "cite",
        "round": 2,
        "attempt": 3,
    }
    environment = jinja2.sandbox.ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
    )
    try:
        expected: str | None = environment.from_string(source).render(**variables)
    except jinja2.UndefinedError:
        expected = None
    except jinja2.TemplateSyntaxError:
        with pytest.raises(templates.TemplateError, match="syntax error"):
            templates.render(source, **variables)  # type: ignore[arg-type]
        return
    if expected is None:
        with pytest.raises(templates.TemplateError, match="unknown variable"):
            templates.render(source, **variables)  # type: ignore[arg-type]
    else:
        # The same text, but for the address of a bound method ({{ vars.items }}).
        address = re.compile(r" at 0x[0-9a-f]+")
        assert address.sub("", templates.render(source, **variables)) == address.sub("", expected)  # type: ignore[arg-type]


SPLIT_SOURCES = [
    "Analyse {{ item }}",
    "{{ item }}",
    "",
    "no variables at all\r\nacross lines\n",
    "You rate {{ vars.topic }} companies.\nRubric: be strict.\n\nCompany: {{ item }}\nDraft: {{ input }}",
    "Rubric {{ vars.topic }}\n   {%- if round %} round {{ round }}{% endif %} {{ item }}",
    "Rules\n{# cache #}Context {{ vars.topic }} for {{ item }}",
    "{{ vars.topic }} then {{ feedback }} and {{ vars.topic }}",
    "{{ vars.topic | upper }} {{ item }}",
    "Long rules. {{ item -}}  trimmed",
]


@pytest.mark.parametrize("source", SPLIT_SOURCES)
def test_a_split_prompt_renders_as_the_whole_and_its_prefix_is_the_same_for_every_item(source: str) -> None:
    one = {"item": "NVDA", "input": "draft A", "feedback": "", "round": 0, "attempt": 1}
    other = {"item": "AMD", "input": "a longer draft B", "feedback": "cite", "round": 2, "attempt": 3}
    topic = {"topic": "chips", "items": "x"}
    prompts = []
    for values in (one, other):
        whole = templates.render(source, vars=topic, **values)  # type: ignore[arg-type]
        prompt, shared = templates.render_split(source, vars=topic, **values)  # type: ignore[arg-type]
        assert prompt == whole
        prompts.append((prompt, shared))
    (first, n), (second, m) = prompts
    assert n == m
    assert first[:n] == second[:m]


def test_the_prefix_ends_at_the_first_part_that_differs_or_at_the_marker() -> None:
    assert templates.split("Rubric for {{ vars.topic }}.\nItem: {{ item }}") == (
        "Rubric for {{ vars.topic }}.\nItem: ",
        "{{ item }}",
    )
    assert templates.split("Rules {# cache #}then {{ vars.topic }} {{ item }}")[0] == "Rules "
    assert templates.split("{{ item }} then rules") == ("", "{{ item }} then rules")
    assert templates.split("Rules\n  {%- if round %}r{% endif %}") == ("Rules", "\n  {%- if round %}r{% endif %}")


def test_only_templates_that_put_variables_into_text_skip_jinja() -> None:
    plain = ["Analyse {{ item }}", "{{item}}{{ vars.topic}}\r\n{{\n input }} }}", "no tags", ""]
    assert all(templates._plain(source) is not None for source in plain)
    jinja_only = ["{{ item | upper }}", "{{ vars.items }}", "{# note #}x", "{{ item -}}", "{% if item %}x{% endif %}"]
    assert all(templates._plain(source) is None for source in jinja_only)


@pytest.fixture
def plan_file(tmp_path: Path) -> Path:
    spec = yaml.safe_load((ROOT / "examples" / "ticker-summary.yaml").read_text(encoding="utf-8"))["spec"]
    compiled = plan.compile_plan("uid-7", v1alpha1.AnalysisBatchSpec.model_validate(spec))
    path = tmp_path / "plan.json"
    path.write_text(compiled.dumps(), encoding="utf-8")
    return path


def test_configuration_from_a_complete_environment(plan_file: Path) -> None:
    cfg, loaded = config.from_env(
        {
            env.REDIS_URL: "redis://127.0.0.1:6379/0",
            env.BATCH_UID: "uid-7",
            env.STAGE: "summarize",
            env.PLAN_PATH: str(plan_file),
            env.POD_NAME: "summarize-abc",
            env.MODE: "deployment",
            env.GRACE_SECONDS: "12.5",
            env.CONCURRENCY: "3",
        }
    )
    assert (cfg.pod_name, cfg.mode, cfg.grace_s, cfg.concurrency) == ("summarize-abc", config.Mode.DEPLOYMENT, 12.5, 3)
    assert cfg.api_key is None
    assert cfg.redis_secret is None
    assert loaded.stage("summarize").next is None


def test_the_redis_password_comes_from_its_own_variable_and_is_never_shown(plan_file: Path) -> None:
    cfg, _ = config.from_env(
        {
            env.REDIS_URL: "redis://redis:6379/0",
            env.BATCH_UID: "uid-7",
            env.STAGE: "summarize",
            env.PLAN_PATH: str(plan_file),
            env.REDIS_PASSWORD: "hunter2-redis",
        }
    )
    assert cfg.redis_secret == "hunter2-redis"
    assert "hunter2" not in repr(cfg)


def test_the_batchs_redis_user_comes_from_the_files_of_its_mounted_secret(plan_file: Path, tmp_path: Path) -> None:
    mounted = tmp_path / "redis"
    mounted.mkdir()
    (mounted / tenancy.SECRET_USERNAME).write_text("analysis-batch-uid-7")
    (mounted / tenancy.SECRET_PASSWORD).write_text("derived-secret\n")
    base = {
        env.REDIS_URL: "redis://redis:6379/0",
        env.BATCH_UID: "uid-7",
        env.STAGE: "summarize",
        env.PLAN_PATH: str(plan_file),
    }
    cfg, _ = config.from_env({**base, env.REDIS_AUTH_DIR: str(mounted)})
    assert (cfg.redis_username, cfg.redis_secret) == ("analysis-batch-uid-7", "derived-secret")
    assert "derived-secret" not in repr(cfg)
    (mounted / tenancy.SECRET_PASSWORD).unlink()
    with pytest.raises(config.ConfigError, match=f"{env.REDIS_AUTH_DIR}=.*: cannot read password"):
        config.from_env({**base, env.REDIS_AUTH_DIR: str(mounted)})


def test_configuration_errors_name_every_variable(plan_file: Path) -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.from_env(
            {
                env.REDIS_URL: "localhost:6379",
                env.BATCH_UID: "other-uid",
                env.STAGE: "sumarize",
                env.PLAN_PATH: str(plan_file),
                env.MODE: "cron",
                env.GRACE_SECONDS: "soon",
                env.CONCURRENCY: "0",
            }
        )
    message = str(caught.value)
    for fragment in (
        "ANALYSIS_REDIS_URL: must be a URL starting with one of redis://",
        "ANALYSIS_MODE='cron'",
        "ANALYSIS_GRACE_SECONDS='soon' is not a number",
        "ANALYSIS_CONCURRENCY='0' must be at least 1",
        "ANALYSIS_BATCH_UID=other-uid but the plan is for batch uid-7",
        "ANALYSIS_STAGE=sumarize: the plan has no stage 'sumarize'",
    ):
        assert fragment in message


def test_a_real_provider_without_a_key_is_a_configuration_error(tmp_path: Path) -> None:
    spec = v1alpha1.AnalysisBatchSpec.model_validate(
        {
            "items": ["A"],
            "providers": {"claude": {"type": "anthropic", "model": "m", "apiKeySecretRef": {"name": "k", "key": "a"}}},
            "stages": [{"name": "s", "provider": "claude", "prompt": "p"}],
        }
    )
    path = tmp_path / "plan.json"
    path.write_text(plan.compile_plan("u", spec).dumps(), encoding="utf-8")
    base = {env.REDIS_URL: "redis://r:6379", env.BATCH_UID: "u", env.STAGE: "s", env.PLAN_PATH: str(path)}
    with pytest.raises(config.ConfigError, match="neither ANALYSIS_API_KEY_FILE nor ANALYSIS_API_KEY gives a key"):
        config.from_env(base)
    cfg, _ = config.from_env({**base, env.API_KEY: "sk-secret"})
    assert "sk-secret" not in repr(cfg)
    # As the operator runs it: the key is a file of the mounted Secret.
    key_file = tmp_path / "api-key"
    key_file.write_text("sk-from-file\n")
    cfg, _ = config.from_env({**base, env.API_KEY_FILE: str(key_file)})
    assert cfg.api_key is not None
    assert cfg.api_key.get_secret_value() == "sk-from-file"
    with pytest.raises(config.ConfigError, match=r"ANALYSIS_API_KEY_FILE=.*: cannot read the API key"):
        config.from_env({**base, env.API_KEY_FILE: str(tmp_path / "missing")})


def test_the_stock_research_plan_links_stages_in_order() -> None:
    spec = yaml.safe_load((ROOT / "examples" / "stock-research.yaml").read_text(encoding="utf-8"))["spec"]
    compiled = plan.compile_plan("u", v1alpha1.AnalysisBatchSpec.model_validate(spec))
    assert [(s.name, s.next) for s in compiled.stages] == [
        ("research", "plan-ok"),
        ("plan-ok", "rank"),
        ("rank", "analyze"),
        ("analyze", "review"),
        ("review", "report"),
        ("report", None),
    ]
    review = compiled.stage("review")
    assert (review.max_rejections, review.on_exhausted) == (3, v1alpha1.OnExhausted.ACCEPT_LAST)
    assert compiled.stage("analyze").rate_limit == plan.RateLimitPlan(
        requests_per_minute=120, tokens_per_minute=400000, window_s=plan.RATE_LIMIT_WINDOW_S
    )
    assert plan.Plan.loads(compiled.dumps()) == compiled


def test_the_renderer_passes_exactly_the_variables_the_compiler_allows() -> None:
    import inspect

    rendered = set(inspect.signature(templates.render).parameters) - {"source"}
    assert rendered == plan.TEMPLATE_VARIABLES


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def turn_logger(stream: CountingStream) -> logging.Logger:
    handler = logs.TurnHandler(stream)
    handler.setFormatter(logs.JsonFormatter("b", "s"))
    logger = logging.getLogger(f"turn-test-{id(stream)}")
    logger.propagate = False
    logger.handlers[:] = [handler]
    return logger


async def test_lines_of_one_loop_turn_are_written_together_when_it_ends() -> None:
    stream = CountingStream()
    logger = turn_logger(stream)
    for n in range(5):
        logger.warning("line", extra={"fields": {"n": n}})
    assert stream.getvalue() == ""  # still this turn
    await asyncio.sleep(0)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["n"] for line in lines] == [0, 1, 2, 3, 4]
    assert stream.writes == 1
    logger.warning("next turn")
    await asyncio.sleep(0)
    assert stream.getvalue().splitlines()[-1].endswith('"msg": "next turn"}')


def test_lines_outside_an_event_loop_are_written_at_once() -> None:
    stream = CountingStream()
    logger = turn_logger(stream)
    logger.warning("at start-up")
    assert json.loads(stream.getvalue())["msg"] == "at start-up"


async def test_a_line_from_another_thread_is_written_at_once_with_what_waits() -> None:
    stream = CountingStream()
    logger = turn_logger(stream)
    logger.warning("in the loop")
    await asyncio.to_thread(logger.warning, "from a thread")
    assert [json.loads(line)["msg"] for line in stream.getvalue().splitlines()] == ["in the loop", "from a thread"]
