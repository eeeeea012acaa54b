"""The route table's analysis: overlaps, gaps and routes never reached, by path and by matcher, as `laneway check`
warns of them."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from laneway.config import load_config, parse_config

SEED = Path(__file__).resolve().parents[1] / "examples" / "model-routing.yaml"


def test_seed_table_overlap_and_gap_are_warnings() -> None:
    warnings = [str(w) for w in load_config(SEED).warnings]
    assert len(warnings) == 2
    overlap, gap = warnings
    assert overlap.startswith("routes[1] (line 6")
    assert "overlaps `route-0`" in overlap and "escalation=true" in overlap and "priority=normal" in overlap
    assert "gap" in gap and "no_route" in gap and "escalation=false" in gap and "priority=low" in gap


def test_an_overlap_of_two_routes_to_the_same_model_names_what_differs() -> None:
    config = parse_config(textwrap.dedent("""
    routes:
    - name: urgent
      matcher: "priority == urgent"
      target: gpt-5
    - name: long
      matcher: "convo_length > 8"
      target: gpt-5
      fallbacks: [gemini-2.5-pro]
    - target: gpt-5-mini
    """))
    [overlap] = [str(w) for w in config.warnings if "overlaps" in str(w)]
    assert "it follows `urgent`'s settings (fallbacks, deadline, lanes), not `long`'s" in overlap
    assert "not `gpt-5`" not in overlap


def test_routes_of_a_shorter_path_serve_the_longer_paths_under_it_in_the_table_analysis() -> None:
    """A route's `path` is a prefix: the seed's `/v1/chat` routes and a default route on the default path
    (`/v1/chat/completions`) leave no gap for the requests clients send, to `/v1/chat/completions`."""
    seed = SEED.read_text() + "- name: default\n  target: claude-sonnet-37\n"
    warnings = [str(w) for w in parse_config(seed).warnings]
    gaps = [w for w in warnings if "gap" in w]
    assert len(gaps) == 1, warnings
    # What is left is a real gap, of other paths under `/v1/chat`, and it says so.
    assert ("a request to `/v1/chat`, or to a path under it other than `/v1/chat/completions` and the paths under "
            "those") in gaps[0]
    assert "`path: /v1/chat`" in gaps[0]


def test_a_route_behind_a_catch_all_of_a_shorter_path_is_never_reached_and_leaves_no_gap() -> None:
    config = parse_config(textwrap.dedent("""
        routes:
        - name: all
          path: /v1/chat
          target: gpt-5-mini
        - name: escalated
          matcher: "escalation == true"
          target: gpt-5
        """))
    warnings = [str(w) for w in config.warnings]
    assert not [w for w in warnings if "gap" in w], warnings
    [never] = [w for w in warnings if "is never reached" in w]
    assert "`escalated`" in never and "taken by an earlier route" in never


def test_a_default_route_behind_a_default_of_a_shorter_path_is_never_reached() -> None:
    config = parse_config(textwrap.dedent("""
        routes:
        - name: all-chat
          path: /v1/chat
          target: gpt-5-mini
        - name: rest
          target: gpt-5
        """))
    [never] = [str(w) for w in config.warnings if "is never reached" in str(w)]
    assert never.startswith("routes[1]") and "`rest`" in never and "taken by an earlier route" in never


@pytest.mark.parametrize("matcher", ["metadata.score > 3", "metadata.score < 3", "metadata.ratio >= 0.5"])
def test_a_route_on_a_number_in_metadata_is_reached(matcher: str) -> None:
    config = parse_config(textwrap.dedent(f"""
        routes:
        - name: scored
          matcher: "{matcher}"
          target: gpt-5
        - name: rest
          target: gpt-5-mini
        """))
    assert not [str(w) for w in config.warnings if "never reached" in str(w)]


def test_a_route_path_with_a_trailing_slash_serves_the_path_without_it() -> None:
    config = parse_config("routes:\n- {path: /v1/chat/completions/, target: gpt-5}\n"
                          "- {path: /v1/, target: gpt-5-mini}\n")
    first, second = config.routes
    assert first.matches_path("/v1/chat/completions") and not first.matches_path("/v1/chat/completionsx")
    assert second.matches_path("/v1/other/completions")


def test_the_table_analysis_tries_no_request_with_more_user_messages_than_messages() -> None:
    config = parse_config("routes:\n- {name: long, matcher: 'convo_length >= 3', target: gpt-5}\n"
                          "- {name: short, matcher: 'turns <= 3', target: gpt-5-mini}\n")
    # `turns=4, convo_length=1` would be a gap, but no request is that
    assert not any("gap" in w.message or "turns=4, convo_length=1" in w.message for w in config.warnings)
    gap = parse_config("routes:\n- {name: long, matcher: 'convo_length >= 6', target: gpt-5}\n"
                       "- {name: short, matcher: 'turns <= 2', target: gpt-5-mini}\n")
    assert any("gap" in w.message for w in gap.warnings), gap.warnings  # turns=3, convo_length=5 is one


def test_a_table_that_serves_no_request_to_the_path_openai_clients_call_is_warned_of() -> None:
    """`path: /v1/chat/completion` passed `check` without a word, and every request of an OpenAI client got a
    404."""
    config = parse_config("routes:\n- target: gpt-5\n  path: /v1/chat/completion\n")
    warnings = [str(w) for w in config.warnings]
    assert any("did you mean `/v1/chat/completions`?" in w for w in warnings), warnings
    assert any("no route serves `/v1/chat/completions`" in w for w in warnings), warnings
    fine = parse_config("routes:\n- target: gpt-5\n  path: /v1/chat\n- target: gpt-5-mini\n  path: /v1/triage\n")
    assert not [w for w in fine.warnings if "/v1/chat/completions" in str(w)], fine.warnings
