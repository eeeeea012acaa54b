"""Routing-file loading: the seed file verbatim, strictness, and error messages that name the YAML path."""

from __future__ import annotations

import textwrap
from pathlib import Path

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


def test_seed_table_overlap_and_gap_are_warnings() -> None:
    warnings = [str(w) for w in load_config(SEED).warnings]
    assert len(warnings) == 2
    overlap, gap = warnings
    assert overlap.startswith("routes[1] (line 6")
    assert "overlaps `route-0`" in overlap and "escalation=true" in overlap and "priority=normal" in overlap
    assert "gap" in gap and "no_route" in gap and "escalation=false" in gap and "priority=low" in gap


@pytest.mark.parametrize(("text", "expected"), [
    ("""
     routes:
     - matcher: "convo_length <= 8 && priority == banana"
       target: claude-sonnet-37
     """,
     "routes[0].matcher (line 3, column 46): unknown value `banana` for `priority`"),
    ("""
     routes:
     - target: gpt-6
     """,
     "routes[0].target (line 3, column 11): unknown model `gpt-6`; known: claude-sonnet-37,"),
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
])
def test_config_errors_name_path_line_and_fix(text: str, expected: str) -> None:
    found = issues_of(text)
    assert any(expected in issue for issue in found), found


def test_every_error_of_a_file_is_reported_at_once() -> None:
    found = issues_of("""
    routes:
    - target: gpt-6
    - matcher: "priority == banana"
      target: gpt-5
    - target: gpt-5
      retry: {attempts: 0}
    """)
    assert len(found) == 3


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
