"""Routing-file loading: the seed file verbatim, strictness, and error messages that name the YAML path."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from laneway.cli import main
from laneway.config import load_config, parse_config
from laneway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "examples" / "model-routing.yaml"


def issues_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(textwrap.dedent(text))
    return [str(issue) for issue in caught.value.issues]


def test_seed_file_loads_verbatim_against_the_builtin_fleet() -> None:
    config = load_config(SEED)
    assert [r.target for r in config.routes] == ["claude-sonnet-37", "heavy-foundation"]
    assert set(config.models) == {"claude-sonnet-37", "heavy-foundation"}
    assert config.models["heavy-foundation"].simulated


@pytest.mark.parametrize(("text", "expected"), [
    ("""
     routes:
     - matcher: "convo_length <= 8 && priority == banana"
       target: claude-sonnet-37
     """,
     "routes[0].matcher (line 3, column 46): unknown value `banana` for `priority`"),
    ("""
     routes:
     - target: gpt-5
       name: |
         billing
     """,
     "routes[0].name (line 4, column 9): 'billing\\n' holds a line break, tab or other control character, which no "
     "response header can carry"),
    ("""
     models:
       "fast\\tmodel": {provider: openai, base_url: "http://localhost:8000/v1"}
     routes:
     - target: gpt-5
     """,
     "models.fast\tmodel (line 3, column 18): the model name 'fast\\tmodel' holds a line break, tab or other control"),
    ("""
     routes:
     - target: gpt-5
       canery: {target: gpt-5-mini, weight: 0.1}
     """,
     "routes[0].canery (line 4, column 11): unknown key `canery`; did you mean `canary`?"),
    ("""
     routes:
     - target: gpt-6
     """,
     "routes[0].target (line 3, column 11): unknown model `gpt-6`; did you mean `gpt-5`? known: claude-sonnet-37,"),
    ("""
     routes:
     - target: gpt-5
       fallbacks: [gpt-5-mini, nope]
     """,
     "routes[0].fallbacks[1] (line 4, column 27): unknown model `nope`"),
    ("""
     routes:
     - target: gpt-5
       fallback: [gpt-5-mini]
     """,
     "routes[0].fallback (line 4, column 13): unknown key `fallback`; did you mean `fallbacks`?"),
    ("""
     models:
       mine:
         provider: openia
         base_url: http://localhost:8000/v1
     routes:
     - target: mine
     """,
     "models.mine.provider (line 4, column 15): unknown value `openia`; expected one of openai, anthropic, gemini"),
    ("""
     models:
       mine:
         provider: openai
         base_url: localhost:8000
         price: {input_per_mtok: -1}
     routes:
     - target: mine
     """,
     "models.mine.base_url (line 5, column 15): `localhost:8000` is not an http(s) URL"),
    ("""
     models:
       mine:
         provider: openai
         base_url: http://localhost:8000/v1
         context_window: lots
     routes:
     - target: mine
     """,
     "models.mine.context_window (line 6, column 21): expected a whole number, got 'lots'"),
    ("""
     routes:
     - matcher: "convo_length <= 8"
     """,
     "routes[0] (line 3, column 3): missing `target`"),
    ("""
     routes: []
     """,
     "routes (line 2, column 9): no routes"),
    ("""
     routes:
     - target: gpt-5
       deadline_ms: 0
     """,
     "routes[0].deadline_ms (line 4, column 16): must be at least 1, got 0"),
    ("""
     routes:
     - target: gpt-5
     - target: gpt-5
       name: route-0
     """,
     "routes[1].name (line 5, column 9): duplicate route name `route-0`"),
    ("""
     routes:
       target: gpt-5
     """,
     "routes (line 3, column 3): expected a list, got a mapping"),
    ("""
     routes:
     - target: gpt-5
     gates: {}
     """,
     "gates (line 4, column 8): unknown key `gates`"),
    ("""
     routes:
     - target: [gpt-5
     """,
     "not valid YAML"),
    ("""
     routes:
     - matcher: "intent in [get_refund, payment_isue]"
       target: gpt-5
     - target: gpt-5-mini
     """,
     "routes[0].matcher (line 3, column 13): `payment_isue` is not an intent of the model `customer-support.npz`: "
     "no request's `intent` is ever `payment_isue` (a `!=` or `not in` with it always holds); "
     "did you mean `payment_issue`?"),
    ("""
     routes:
     - matcher: "intent != shiping_status"
       target: gpt-5
     - target: gpt-5-mini
     """,
     "`shiping_status` is not an intent of the model `customer-support.npz`: no request's `intent` is ever "
     "`shiping_status` (a `!=` or `not in` with it always holds)"),
    ("""
     models:
       mine:
         provider: openai
         base_url: http://localhost:8000/v1
         prompt_cache: true
     routes:
     - target: mine
     """,
     "models.mine.prompt_cache (line 6, column 19): `prompt_cache` is for `anthropic` models; `openai` caches"),
    ("""
     models:
       mine:
         provider: openai
         base_url: http://localhost:8000/v1
         price: {input_per_mtok: 1.25, cached_input_per_mtok: -0.1}
     routes:
     - target: mine
     """,
     "models.mine.price.cached_input_per_mtok (line 6, column 58): must be at least 0"),
    ("""
     models:
       mine:
         provider: openai
         base_url: http://127.0.0.1:99999/v1
     routes:
     - target: mine
     """,
     "models.mine.base_url (line 5, column 15): `http://127.0.0.1:99999/v1` has a port that is not a number from 1 "
     "to 65535"),
    ("routes:\n- target: gpt5\n", "routes[0].target (line 2, column 11): unknown model `gpt5`; did you mean `gpt-5`? "
     "known: "),
    ("routes:\n- target: gpt-5\n  deadline_ms: 36000000\n",
     "routes[0].deadline_ms (line 3, column 16): must be at most 3,600,000, got 36000000"),
    ("server: {deadline_ms: 99999999999}\nroutes:\n- target: gpt-5\n",
     "server.deadline_ms (line 1, column 23): must be at most 3,600,000"),
    ("sim: {port: 99999}\nroutes:\n- target: gpt-5\n",
     "sim.port (line 1, column 13): must be at most 65,535, got 99999"),
    ("sim: {fleet: no-such-fleet.yaml}\nroutes:\n- target: gpt-5\n",
     "sim.fleet (line 1, column 14): `no-such-fleet.yaml` is not a file (read relative to the routing file's folder"),
    ("telemetry: {stats_window: 100000000000}\nroutes:\n- target: gpt-5\n",
     "telemetry.stats_window (line 1, column 27): must be at most 1,000,000, got 100,000,000,000"),
    ('admin: {key_env: "${ADMIN_KEY}"}\nroutes:\n- target: gpt-5\n',
     "admin.key_env (line 1, column 19): must be the name of the environment variable that holds the secret"),
    ("models:\n  m: {provider: openai, base_url: 'sim:///gpt-5/v1', model: gpt-5, price: {input_per_mtok: .nan, "
     "output_per_mtok: 1}}\nroutes:\n- target: m\n",
     "models.m.price.input_per_mtok (line 2, column 92): expected a finite number, got .nan"),
    ("routes:\n- target: gpt-5\n  canary: {target: gpt-5-mini, weight: .NaN}\n",
     "routes[0].canary.weight (line 3, column 40): expected a finite number, got .nan"),
    ("models:\n  z: {provider: openai, base_url: 'sim:///gpt5/v1', model: gpt-5}\nroutes:\n- target: z\n",
     "models.z.base_url (line 2, column 36): the simulated fleet has no model `gpt5`; did you mean `gpt-5`? it has: "
     "claude-sonnet-37, gemini-2.5-flash-lite"),
    ("routes:\n- {name: route-1, target: gpt-5}\n- {target: gpt-5-mini}\n",
     "routes[1] (line 3, column 3): `routes[1]` has no `name`, so it is called `route-1`, which another route is "
     "named already; give it a `name`"),
    ("state: redis://:s3cret@127.0.0.1:6379/zz\nroutes:\n- target: gpt-5\n",
     "state (line 1, column 8): `redis://:***@127.0.0.1:6379/zz` names the database `zz`"),
    ("telemetry: {exchange_log: 'postgresql://u:s3cret@db:badport/log'}\nroutes:\n- target: gpt-5\n",
     "telemetry.exchange_log (line 1, column 28): `postgresql://u:***@db:badport/log` has a port that is not a number"),
    ("telemetry: {exchange_log: 'mysql://u:s3cret@h/db'}\nroutes:\n- target: gpt-5\n",
     "`mysql://u:***@h/db` is not an exchange log URL"),
    ("models:\n  u: {provider: openai, base_url: 'http://admin:s3cret@127.0.0.1:9749/v1', model: m}\n"
     "routes:\n- target: u\n", "models.u.base_url (line 2, column 36): `http://admin:***@127.0.0.1:9749/v1` holds "
     "credentials (`user:password@`), which are not sent"),
    ("routes:\n- target: gpt-5\n  cache: on\n", "routes[0].cache (line 3, column 10): write the cache as a "
     "mapping: `cache: {mode: on}`"),
    ("routes:\n- {path: /v2/chat, target: gpt-5}\n", "routes[0].path (line 2, column 10): no request reaches "
     "`/v2/chat`: chat requests arrive at `/v1/.../completions`"),
    ("state: redis://127.0.0.1:notaport/0\nroutes:\n- target: gpt-5\n",
     "state (line 1, column 8): `redis://127.0.0.1:notaport/0` has a port that is not a number from 1 to 65535"),
    ("state: redis://127.0.0.1:6379/abc\nroutes:\n- target: gpt-5\n",
     "names the database `abc`, which is not a number; use `redis://HOST:PORT/DB`"),
    ("state: unix:///run/redis.sock?db=x\nroutes:\n- target: gpt-5\n", "names the database `x`"),
    ("state: http://redis:6379\nroutes:\n- target: gpt-5\n", "`http://redis:6379` is not a Redis URL"),
    (f"keys:\n  - {{name: w, hash: 'sha256:{'0' * 64}', usd_budget: .inf}}\nroutes:\n- target: gpt-5\n",
     "keys[0].usd_budget (line 2, column 108): expected a finite number, got .inf"),
])
def test_config_errors_name_path_line_and_fix(text: str, expected: str) -> None:
    found = issues_of(text)
    assert any(expected in issue for issue in found), found
    assert not any("s3cret" in issue for issue in found), found  # a password in a URL is never repeated


def test_a_secret_pasted_for_the_name_of_its_variable_is_an_error_that_never_repeats_it() -> None:
    found = issues_of("""
        models:
          m: {provider: openai, base_url: https://api.openai.com/v1, api_key_env: sk-proj-SECRETabc123}
        routes:
        - target: m
        """)
    assert found == ["models.m.api_key_env (line 3, column 75): must be the name of the environment variable that "
                     "holds the secret (letters, digits and `_`, such as `OPENAI_API_KEY`), not the secret itself; "
                     "`${...}` is not expanded"]


def test_every_error_of_a_file_is_reported_at_once() -> None:
    found = issues_of("""
    routes:
    - target: gpt-6
    - matcher: "priority == banana"
      target: gpt-5
    - target: gpt-5
      retry: {attempts: 0}
    - matcher: "priorty == high"
      target: gpt-7
      fallbacks: [gpt-8]
    """)
    assert len(found) == 6, found
    # A route whose matcher is wrong still has its other mistakes reported.
    assert [issue.split(" ")[0] for issue in found[3:]] == ["routes[3].matcher", "routes[3].target",
                                                            "routes[3].fallbacks[0]"]


def test_route_deadline_and_model_deadline() -> None:
    config = parse_config(textwrap.dedent("""
    routes:
    - target: heavy-foundation
      deadline_ms: 1200
    - target: gpt-5
    """))
    first, second = config.routes
    assert config.deadline_ms(first, config.models["heavy-foundation"]) == 1200
    assert config.deadline_ms(second, config.models["gpt-5"]) == 5000


def test_check_prints_table_and_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(SEED)]) == 0
    out = capsys.readouterr().out
    assert "convo_length <= 8 && priority == normal" in out and "claude-sonnet-37" in out
    assert out.count("warning:") == 2
    assert main(["check", "--config", str(SEED)]) == 0  # as `serve` names it
    assert capsys.readouterr().out == out
    assert main(["check", str(SEED), "--config", str(SEED)]) == 2  # a usage error, as argparse's are
    assert capsys.readouterr().err.startswith("laneway check: give the routing file once, not both")


def test_check_fails_with_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n- matcher: \"convo_length <= eight\"\n  target: gpt-5\n")
    assert main(["check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "routes[0].matcher (line 2, column 29)" in err
    assert "`convo_length` is a number" in err


def test_builtin_default_and_examples_are_valid() -> None:
    assert load_config(None).simulated
    for example in sorted((ROOT / "examples").glob("*.yaml")):
        assert load_config(example).routes, example


def test_a_confidence_over_1_can_never_be_reached_and_a_confidence_of_1_can() -> None:
    config = parse_config(textwrap.dedent("""
        routes:
        - name: impossible
          matcher: "intent_confidence > 1.5"
          target: gpt-5
        - name: certain
          matcher: "intent_confidence >= 1"
          target: gpt-5
        - name: rest
          target: gpt-5-mini
        """))
    never = [str(w) for w in config.warnings if "is never reached" in str(w)]
    assert len(never) == 1 and never[0].startswith("routes[0].matcher") and "`impossible`" in never[0]


def test_a_matcher_that_contradicts_itself_is_named_as_such_not_as_shadowed() -> None:
    config = parse_config(textwrap.dedent("""
        routes:
        - name: never
          matcher: "convo_length > 10 && convo_length < 5"
          target: gpt-5
        - name: shadowed
          matcher: "convo_length > 40"
          target: gpt-5
        - name: rest
          target: gpt-5-mini
        """))
    warnings = [str(w) for w in config.warnings]
    contradiction = next(w for w in warnings if "`never`" in w)
    assert contradiction.startswith("routes[0].matcher") and "matched none" in contradiction
    assert "earlier route" not in contradiction
    assert not any("`shadowed` is never reached" in w for w in warnings)


def test_unreadable_and_duplicated_input_is_named_with_file_line_and_column(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00routes")
    twice = tmp_path / "twice.yaml"
    twice.write_text("routes:\n- name: a\n  target: gpt-5\n  target: gpt-5-mini\n")
    assert main(["check", str(binary)]) == 2
    assert "not UTF-8 text (byte 0xff at offset 0)" in capsys.readouterr().err
    assert main(["check", str(twice)]) == 2
    assert f"{twice}: 1 error(s)" in (err := capsys.readouterr().err) and "routes[0].target (line 4, column 3)" in err


def test_check_warns_of_the_variables_the_file_names_and_the_environment_lacks(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LANEWAY_TEST_UNSET_KEY", raising=False)
    monkeypatch.setenv("LANEWAY_TEST_ADMIN", "set")
    path = tmp_path / "keys.yaml"
    path.write_text(textwrap.dedent("""
        admin: {key_env: LANEWAY_TEST_ADMIN}
        models:
          fast:
            provider: openai
            base_url: http://127.0.0.1:9/v1
            model: gpt-4o-mini
            api_key_env: LANEWAY_TEST_UNSET_KEY
            price: {input_per_mtok: 1, output_per_mtok: 2}
        routes:
        - target: fast
        """))
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "models.fast.api_key_env: `LANEWAY_TEST_UNSET_KEY` is not set" in out
    assert "admin.key_env" not in out
    monkeypatch.delenv("LANEWAY_TEST_ADMIN")
    assert main(["check", str(path)]) == 0
    assert "admin.key_env: `LANEWAY_TEST_ADMIN` is not set" in capsys.readouterr().out


def test_check_table_shows_each_routes_lanes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "lanes.yaml"
    path.write_text(textwrap.dedent("""
        routes:
        - name: trial
          target: gpt-5
          canary: {target: gpt-5-mini, weight: 0.05}
          shadow: [{target: claude-sonnet-37, sample: 0.1}]
          cascade: {confidence: 0.7, escalate_to: heavy-foundation}
          cache: {mode: read_only}
        - name: plain
          target: gpt-5-mini
          long_context: gpt-5
        """))
    assert main(["check", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[1]: line for line in lines[2:4]}
    assert rows["plain"][lines[1].index("fallbacks")] == "["  # the column's text starts where its header does
    assert rows["trial"].endswith("canary gpt-5-mini 5%, shadow claude-sonnet-37 10%, "
                                  "cascade < 0.7 -> heavy-foundation, cache read_only")
    assert rows["plain"].endswith("[long context: gpt-5]  -")


def test_check_of_a_config_with_a_knowledge_base_prints_only_its_report() -> None:
    # The retrieval library logs at DEBUG on its own; its lines used to reach the terminal.
    done = subprocess.run([sys.executable, "-m", "laneway", "check", str(ROOT / "examples" / "case-study-final.yaml")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "OK - 5 routes" in done.stdout
    assert done.stderr == ""


def test_check_warns_of_a_provider_api_without_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "no-key.yaml"
    path.write_text(textwrap.dedent("""
        models:
          claude:
            provider: anthropic
            base_url: https://api.anthropic.com
            model: claude-sonnet-4-5
            price: {input_per_mtok: 3.0, output_per_mtok: 15.0}
          local:
            provider: openai
            base_url: http://127.0.0.1:8000/v1
            model: llama
            price: {input_per_mtok: 0, output_per_mtok: 0}
        routes:
        - target: claude
          fallbacks: [local]
        """))
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "models.claude: no `api_key_env`, so requests to api.anthropic.com go without a key" in out
    assert "add `api_key_env: ANTHROPIC_API_KEY`" in out
    assert "models.local" not in out  # a self-hosted server may take requests without a key


def test_a_taken_or_impossible_port_is_refused_before_serving(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with pytest.raises(SystemExit):
        main(["serve", "--port", "99999"])
    assert "`99999` is not a TCP port" in capsys.readouterr().err
    for workers in ("0", "-2", "two"):
        with pytest.raises(SystemExit):
            main(["serve", "--workers", workers])
        assert f"`{workers}` is not a number of worker processes (1 or more" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err and "serving" not in err


@pytest.mark.parametrize(("text", "only"), [
    ("""
     models:
       fast: {provider: mistral, base_url: "http://127.0.0.1:9/v1"}
     routes:
     - target: fast
     """, "models.fast.provider (line 3, column 20): unknown value `mistral`"),
    ("""
     models:
       fast: {provider: openai, base_url: "https://"}
     routes:
     - target: fast
     """, "models.fast.base_url (line 3, column 39): `https://` names no host"),
    ("""
     routes:
     - target: gpt-5
       canary: {target: gpt-5-mini, weight: 5}
     """, "routes[0].canary.weight (line 4, column 40): must be a fraction between 0 and 1, got 5"),
    ("""
     models:
       fast: {base_url: "http://127.0.0.1:9/v1"}
     routes:
     - target: fast
       cascade: {confidence: 0.5, escalate_to: gpt-5}
     """, "models.fast (line 3, column 9): missing `provider`"),
])
def test_one_mistake_is_one_error_not_a_cascade_of_follow_ons(text: str, only: str) -> None:
    issues = issues_of(text)
    assert len(issues) == 1 and issues[0].startswith(only), issues


def test_a_repeated_model_or_a_canary_of_the_target_itself_is_a_warning_and_an_empty_name_an_error() -> None:
    config = parse_config(textwrap.dedent("""
        routes:
        - target: gpt-5
          fallbacks: [gpt-5-mini, gpt-5, gpt-5-mini]
          canary: {target: gpt-5, weight: 0.1}
        """))
    warnings = [str(w) for w in config.warnings]
    assert any(w.startswith("routes[0].fallbacks[1]") and "`gpt-5` is the target already" in w for w in warnings)
    assert any(w.startswith("routes[0].fallbacks[2]") and "an earlier fallback" in w for w in warnings)
    assert any(w.startswith("routes[0].canary.target") and "route's own target" in w for w in warnings)
    assert issues_of("""
        routes:
        - name: ""
          target: gpt-5
        """) == ["routes[0].name (line 3, column 10): must not be empty; leave `name` out to be called "
                 "`route-0`, or give one"]


def test_lanes_that_send_to_the_model_beside_them_or_repeat_are_warnings() -> None:
    config = parse_config(textwrap.dedent("""
        routes:
        - target: gpt-5
          canary: [{target: gpt-5-mini, weight: 0.1}, {target: gpt-5-mini, weight: 0.2}]
          shadow: [{target: claude-sonnet-37}, {target: gpt-5}, {target: claude-sonnet-37, sample: 0.5}]
          cascade: {confidence: 0.5, source: logprobs, escalate_to: gpt-5, verifier: gpt-5-mini}
        """))
    warnings = sorted(str(w) for w in config.warnings)
    assert len(warnings) == 5, warnings
    assert warnings[0].startswith("routes[0].canary[1].target") and "a canary of this route already" in warnings[0]
    assert warnings[1].startswith("routes[0].cascade.escalate_to") and "own target" in warnings[1]
    assert warnings[2].startswith("routes[0].cascade.verifier") and "never called" in warnings[2]
    assert warnings[3].startswith("routes[0].shadow[1].target") and "compared with itself" in warnings[3]
    assert warnings[4].startswith("routes[0].shadow[2].target") and "a shadow of this route already" in warnings[4]
    # The same plan without the mistakes warns of nothing.
    clean = parse_config(textwrap.dedent("""
        routes:
        - target: gpt-5
          canary: [{target: gpt-5-mini, weight: 0.1}, {target: claude-sonnet-37, weight: 0.2}]
          shadow: [{target: claude-sonnet-37}]
          cascade: {confidence: 0.5, source: verifier, escalate_to: heavy-foundation, verifier: gpt-5-mini}
        """))
    assert [str(w) for w in clean.warnings] == []


def test_a_file_that_expands_without_bound_through_aliases_is_refused() -> None:
    lines, previous = ["a: &a [x, x, x, x, x, x, x, x, x]"], "a"
    for name in "bcdefgh":  # 9**8 values once expanded
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
        previous = name
    with pytest.raises(ConfigError, match="expands to more than 200,000 values"):
        parse_config("\n".join([*lines, "routes: *h"]))


@pytest.mark.parametrize(("content", "words"), [
    ("{broken", "is not valid JSON"),
    ("", "has no text to index"),
])
def test_check_reads_the_knowledge_sources_serve_would_read(tmp_path: Path, content: str, words: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / ("faq.json" if content else "faq.md")
    source.write_text(content)
    path = tmp_path / "routes.yaml"
    path.write_text(f"knowledge:\n  acme:\n    sources: [{source}]\nroutes:\n- target: gpt-5\n"
                    "  retrieval: {knowledge: acme}\n")
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: 1 error(s)" in err and "knowledge.acme: " in err and words in err and "Traceback" not in err


def test_a_knowledge_base_with_both_sources_and_an_index_is_refused(tmp_path: Path) -> None:
    """Serving would read the index and leave every edit of the sources unread."""
    source = tmp_path / "faq.md"
    source.write_text("# Fees\n\nA late fee is charged after 30 days.\n")
    text = f"knowledge:\n  acme:\n    sources: [{source}]\n    index: built\nroutes:\n- target: gpt-5\n"
    with pytest.raises(ConfigError, match=r"knowledge\.acme.*either `sources:`.*or `index:`.*not both"):
        parse_config(text)


def test_a_retrieval_miss_sent_to_the_routes_own_target_is_a_warning(tmp_path: Path) -> None:
    source = tmp_path / "faq.md"
    source.write_text("# Fees\n\nA late fee is charged after 30 days.\n")
    plan = ("knowledge:\n  acme:\n    sources: [{source}]\n"
            "routes:\n- target: gpt-5\n  retrieval: {{knowledge: acme{miss}}}\n")
    same = parse_config(plan.format(source=source, miss=", on_miss: gpt-5"))
    assert [str(w).split(" (line")[0] for w in same.warnings] == ["routes[0].retrieval.on_miss"]
    assert "the route's own target" in str(same.warnings[0])
    other = parse_config(plan.format(source=source, miss=", on_miss: heavy-foundation"))
    assert [str(w) for w in other.warnings] == []


def test_lanes_that_compare_a_model_with_itself_or_can_never_run_are_warnings() -> None:
    config = parse_config(textwrap.dedent("""
        shadow: {targets: [{target: gpt-5}], usd_per_hour: 0}
        routes:
        - name: grade
          matcher: "priority == low"
          target: gpt-5-mini
          cascade: {confidence: 0.5, source: verifier, escalate_to: gpt-5, verifier: gpt-5-mini}
        - name: heavy
          target: gpt-5
        """))
    warnings = {str(w).split(" (line")[0].split(":")[0]: str(w) for w in config.warnings}
    assert set(warnings) == {"routes[0].cascade.verifier", "shadow.targets[0].target", "shadow.usd_per_hour"}
    assert "grades its own answers" in warnings["routes[0].cascade.verifier"]
    assert "target of route(s) heavy" in warnings["shadow.targets[0].target"]
    assert "every shadow copy is dropped unsent" in warnings["shadow.usd_per_hour"]


def test_the_simulated_fleet_seed_is_one_laneway_sim_takes() -> None:
    issues = issues_of("""
        sim: {seed: 4294967296}
        routes:
        - target: gpt-5
        """)
    assert issues == ["sim.seed (line 2, column 13): must be at most 4,294,967,295, got 4294967296"]


def test_a_model_without_a_price_is_warned_of_and_named_with_the_usd_limit_it_defeats() -> None:
    config = parse_config("""
models:
  priced: {provider: openai, base_url: "http://127.0.0.1:8000/v1", price: {input_per_mtok: 0, output_per_mtok: 0}}
  unpriced: {provider: openai, base_url: "http://127.0.0.1:8000/v1", gate: {usd_per_minute: 0.5}}
routes:
- target: priced
  fallbacks: [unpriced]
""")
    [warning] = [str(w) for w in config.warnings]
    assert warning.startswith("models.unpriced.price") and "cost $0" in warning
    assert "its gate's `usd_per_minute` never binds" in warning


def test_a_profiles_sampling_values_are_held_to_the_ranges_of_a_request() -> None:
    issues = issues_of("""
        models:
          m:
            provider: openai
            base_url: http://127.0.0.1:9/v1
            profile: {temperature: 3, top_p: 7, presence_penalty: -3, max_tokens: 2000000}
        routes:
        - target: m
        """)
    for key, words in (("temperature", "must be at most 2, got 3"), ("top_p", "must be at most 1, got 7"),
                       ("presence_penalty", "must be at least -2, got -3"),
                       ("max_tokens", "must be at most 1,000,000, got 2000000")):
        assert any(f"models.m.profile.{key}" in issue and words in issue for issue in issues), (key, issues)


PRIORITIES = """
models:
  heavy: {{provider: openai, base_url: "sim:///gpt-5/v1", model: gpt-5, gate: {{max_concurrency: 2}}}}
priorities: {{escalation: "intent == {label}"}}
routes:
- target: heavy
"""


def test_priorities_that_read_the_intent_get_the_classifier_and_name_a_label_it_knows(sim_url: str) -> None:
    from laneway.runtime import Runtime
    from laneway.signals import Signals

    config = parse_config(PRIORITIES.format(label="complaint"))
    runtime = Runtime.build(config, sim_url)
    assert runtime.classify is not None  # the routes alone do not read `intent`: the priorities do
    complaint = Signals([{"role": "user", "content": "I want to file a complaint about your terrible service"}],
                        intent_fn=runtime.classify)
    assert config.priorities.of(complaint) == 0  # queued first
    with pytest.raises(ConfigError) as caught:
        parse_config(PRIORITIES.format(label="complaintt"))
    [issue] = caught.value.issues
    assert issue.path == "priorities.escalation" and "did you mean `complaint`?" in issue.message, issue


def test_yaml_merge_keys_share_settings_and_a_key_of_the_mapping_overrides_them() -> None:
    config = parse_config("""
models:
  a: &common
    provider: openai
    base_url: sim:///gpt-5/v1
    model: gpt-5
    price: {input_per_mtok: 1, output_per_mtok: 2}
  b:
    <<: *common
    model: gpt-5-mini
routes: [{target: a}, {target: b}]
""")
    a, b = config.models["a"], config.models["b"]
    assert (b.model, b.base_url, b.price) == ("gpt-5-mini", a.base_url, a.price)
    with pytest.raises(ConfigError, match="duplicate key"):
        parse_config("models:\n  a: &c {provider: openai, base_url: 'sim:///gpt-5/v1'}\n"
                     "  b: {<<: *c, model: x, model: y}\nroutes: [{target: a}]\n")


def test_a_profile_max_tokens_the_window_cannot_hold_is_a_warning() -> None:
    config = parse_config("models:\n  m: {provider: openai, base_url: 'sim:///gpt-5/v1', model: gpt-5, "
                          "context_window: 2000, profile: {max_tokens: 5000}}\nroutes:\n- target: m\n")
    [warning] = [w for w in config.warnings if w.path == "models.m.profile.max_tokens"]
    assert "5000 tokens of output do not fit the model's `context_window` (2000)" in warning.message


def test_cache_written_as_a_word_gets_its_hint_alone() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("routes:\n- target: gpt-5\n  cache: on\n")
    [issue] = caught.value.issues
    assert issue.path == "routes[0].cache" and "write the cache as a mapping" in issue.message


@pytest.mark.parametrize(("text", "words"), [
    ("routes:\n- target: gpt-5\n  matcher: \"" + "(" * 500 + "priority == urgent" + ")" * 500 + "\"\n",
     "routes[0].matcher (line 3, column 45): nested more than 32 levels deep (parentheses and `!`)"),
    ("routes:\n- target: gpt-5\n  matcher: \"" + "!" * 40 + "escalation\"\n", "nested more than 32 levels deep"),
    ("a: " + "[" * 900 + "]" * 900 + "\nroutes:\n- target: gpt-5\n", "nest hundreds of levels deep"),
    ("a: &a [*a]\nroutes:\n- target: gpt-5\n", "an alias holds itself"),
])
def test_values_nested_past_any_real_file_are_an_error_not_a_crash(text: str, words: str) -> None:
    """They ended `laneway check` and `laneway serve` with a RecursionError's traceback."""
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert words in str(caught.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("model:\n  m: {provider: openai, base_url: 'sim:///gpt-5/v1'}\nroutes:\n- target: gpt-5\n",
     "did you mean `models`?"),
    ("models:\n  m: {provider: openai, base_url: 'sim:///gpt-5/v1', gates: {max_concurrency: 1}}\n"
     "routes:\n- target: m\n", "did you mean `gate`?"),
    ("models:\n  m: {provider: openai, base_url: 'sim:///gpt-5/v1', gate: {adaptiv: {target_p95_ms: 9}}}\n"
     "routes:\n- target: m\n", "did you mean `adaptive`?"),
    (f"keys:\n- {{name: w, hash: 'sha256:{'0' * 64}', route: [chat]}}\nroutes:\n- target: gpt-5\n",
     "did you mean `routes`?"),
])
def test_an_unknown_key_is_told_the_optional_key_it_misspells(text: str, expected: str) -> None:
    """Keys read only when present were missing from the hint: `model:` was told the known keys, without
    `models`, as `gates:`, `adaptiv:` and a client key's `route:` were told theirs without the key meant."""
    assert any(expected in issue for issue in issues_of(text)), issues_of(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("models:\n  auto: {provider: openai, base_url: 'sim:///gpt-5/v1'}\nroutes:\n- target: auto\n",
     ("models.auto", "`auto` names the route table")),
    ("server: {table: front}\nmodels:\n  front: {provider: openai, base_url: 'sim:///gpt-5/v1'}\n"
     "routes:\n- target: gpt-5-mini\n", ("models.front", "`front` names the route table")),
    ("server: {table: gpt-5}\nroutes:\n- target: gpt-5-mini\n", ("server.table", "`gpt-5` is a model's name")),
])
def test_a_model_named_as_the_route_table_is_an_error(text: str, expected: tuple[str, str]) -> None:
    """It passed, was listed by `/v1/models` as a model to call, and a request naming it was routed by the table
    to another model, without a word."""
    path, message = expected
    assert any(issue.startswith(path + " ") and message in issue for issue in issues_of(text)), issues_of(text)


@pytest.mark.parametrize(("setting", "path"), [
    ("models:\n  m: {provider: openai, base_url: 'sim:///gpt-5/v1', cooldown: {cooldown_ms: 100000000000000}}\n"
     "routes:\n- target: m\n", "models.m.cooldown.cooldown_ms"),
    ("models:\n  m: {provider: openai, base_url: 'sim:///gpt-5/v1', stream_idle_ms: 100000000000000}\n"
     "routes:\n- target: m\n", "models.m.stream_idle_ms"),
    ("models:\n  m: {provider: openai, base_url: 'sim:///gpt-5/v1', gate: {queue_timeout_ms: 100000000000}}\n"
     "routes:\n- target: m\n", "models.m.gate.queue_timeout_ms"),
    ("routes:\n- target: gpt-5\n  retry: {backoff_ms: 100000000000}\n", "routes[0].retry.backoff_ms"),
    ("routes:\n- target: gpt-5\n  cache: {mode: on, ttl_s: 100000000000}\n", "routes[0].cache.ttl_s"),
    ("server: {shutdown_grace_ms: 100000000000}\nroutes:\n- target: gpt-5\n", "server.shutdown_grace_ms"),
])
def test_a_time_far_past_any_use_is_refused(setting: str, path: str) -> None:
    """Only the deadlines had a bound: one failure and a `cooldown_ms` of 10^14 kept a model out for ever, and
    clients were told `retry-after: 100000000000`."""
    assert any(issue.startswith(path + " ") for issue in issues_of(setting)), issues_of(setting)


def test_an_empty_model_name_is_refused() -> None:
    """Answered requests carried an empty `x-laneway-model`, which says a request was refused before routing."""
    issues = issues_of('models:\n  "": {provider: openai, base_url: "sim:///gpt-5/v1"}\nroutes:\n- target: ""\n')
    assert any("a model name must not be empty" in issue for issue in issues), issues


@pytest.mark.parametrize("command", ["keys", "knowledge"])
def test_a_command_without_its_action_says_so_in_its_own_usage(command: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`laneway keys` printed the top-level help, `laneway knowledge` named an internal variable."""
    with pytest.raises(SystemExit) as stopped:
        main([command])
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert f"usage: laneway {command} [-h] ACTION" in err and "required: ACTION" in err, err


def test_a_long_context_model_that_is_the_routes_own_target_is_warned_of() -> None:
    """Every other lane naming the target got a warning; `long_context` did not, and a prompt too long for the
    target was sent to it again."""
    config = parse_config("routes:\n- target: gpt-5\n  long_context: gpt-5\n")
    assert any(str(w).startswith("routes[0].long_context ") and "own target" in str(w) for w in config.warnings)


def test_check_loads_the_fleet_file_and_finds_the_simulated_models_the_routes_use_in_it(tmp_path: Path) -> None:
    """`check` passed a fleet file that `serve` then refused, and a fleet without a model the routes used, whose
    every request then failed with a 502."""
    import yaml

    from laneway.sim._fleet import load_fleet

    broken = tmp_path / "broken.yaml"
    broken.write_text("models: 5\n")
    issues = issues_of(f"sim: {{fleet: '{broken}'}}\nroutes:\n- target: gpt-5\n")
    assert any(issue.startswith("sim.fleet ") and "models: expected a mapping" in issue for issue in issues), issues
    one = tmp_path / "one.yaml"
    fleet = yaml.safe_load(Path(str(load_fleet.__code__.co_filename)).with_name("fleet.yaml").read_text())
    one.write_text(yaml.safe_dump({"models": {"gpt-5-mini": fleet["models"]["gpt-5-mini"]}}))
    issues = issues_of(f"sim: {{fleet: '{one}'}}\nroutes:\n- target: gpt-5\n")
    assert any(issue.startswith("sim.fleet ") and "built-in model `gpt-5`" in issue for issue in issues), issues
    assert parse_config(f"sim: {{fleet: '{one}'}}\nroutes:\n- target: gpt-5-mini\n").routes


@pytest.mark.parametrize(("key", "value", "said"), [
    ("slots", 0, "models.gpt-5-mini.slots: must be a whole number, at least 1"),
    ("slots", -3, "models.gpt-5-mini.slots: must be a whole number, at least 1"),
    ("context_window", 0, "models.gpt-5-mini.context_window: must be a whole number of tokens, at least 1"),
    ("overflow", "stal", "models.gpt-5-mini.overflow: must be `error` or `stall`"),
    ("quality", 1.5, "models.gpt-5-mini.quality: must be a fraction from 0 to 1"),
])
def test_a_fleet_value_no_simulated_model_can_run_with_names_its_path(tmp_path: Path, key: str, value: Any,
                                                                      said: str) -> None:
    """`check` passed them: with `slots: 0` every request ended in a timeout, and `overflow: stal` ran as
    `error`."""
    import yaml

    from laneway.sim._fleet import load_fleet

    fleet = yaml.safe_load(Path(str(load_fleet.__code__.co_filename)).with_name("fleet.yaml").read_text())
    entry = {**fleet["models"]["gpt-5-mini"], key: value}
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({"models": {"gpt-5-mini": entry}}))
    with pytest.raises(ConfigError) as refused:
        load_fleet(str(path))
    assert said in str(refused.value)
