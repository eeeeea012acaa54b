"""Arbitrary input never crashes Laneway: property tests of the matcher and the config loader, and a
schemathesis run of the OpenAPI document against a live gateway."""

from __future__ import annotations

import gzip
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance

from _live import LiveGateway, live_gateway
from laneway.config import MatcherError, compile_matcher, parse_config
from laneway.errors import ConfigError

WORDS = ["convo_length", "priority", "escalation", "channel", "intent", "metadata.plan", "normal", "high",
         "true", "false", "8", "0.5", "'x'", "==", "!=", "<", "<=", ">", ">=", "&&", "||", "!", "(", ")",
         "in", "not", "[", "]", ","]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(WORDS), max_size=12).map(" ".join) | st.text(max_size=40))
def test_matcher_compiles_or_fails_with_a_column(source: str) -> None:
    try:
        matcher = compile_matcher(source)
    except MatcherError as error:
        assert error.message and 1 <= error.column <= len(source) + 1
    else:
        assert isinstance(matcher.signals, frozenset)


YAML_ATOMS = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**7), st.floats(allow_nan=False),
                       st.text(max_size=12), st.sampled_from(["gpt-5", "sim:///gpt-5/v1", "openai", "/v1/chat"]))
KEYS = st.sampled_from(["models", "routes", "target", "matcher", "fallbacks", "provider", "base_url", "price",
                        "gate", "cache", "shadow", "canary", "cascade", "retrieval", "telemetry", "keys", "x"])
DOCS = st.recursive(YAML_ATOMS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
                    max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCS)
def test_config_loader_never_crashes(document: Any) -> None:
    try:
        parse_config(json.dumps(document))
    except ConfigError as error:
        assert error.issues and all(isinstance(issue.message, str) and issue.message for issue in error.issues)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_garbage_yaml_is_a_config_error(raw: bytes) -> None:
    try:
        parse_config(raw.decode("utf-8", "replace"))
    except ConfigError as error:
        assert error.issues


FAST = """
routes:
- target: gpt-5-mini
"""


@pytest.fixture(scope="module")
def live(sim_url: str) -> Iterator[LiveGateway]:
    with live_gateway(FAST, sim_url) as gateway:
        yield gateway


def raw_post(live: LiveGateway, data: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(live.url + "/v1/chat/completions", data=data)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize(("data", "needle"), [
    (b"[" * 5000 + b"]" * 5000, "not valid JSON"),
    (b'{"model": "laneway", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
     "request body is not UTF-8: send the JSON encoded as UTF-8"),
    (gzip.compress(b'{"model": "laneway", "messages": [{"role": "user", "content": "hi"}]}'),
     "request body is gzip-compressed: send the JSON uncompressed"),
    (b'{"model": 7, "messages": []}', "`model` must be a string, got 7"),
    (b'{"model": "laneway", "messages": [{"role": "user", "content": "hi"}], "metadata": {"x": ' + b"[" * 300
     + b"]" * 300 + b"}}", "the request's JSON is nested more than 100 levels deep"),
    (b'{"model": "laneway", "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": '
     b'"json_schema", "json_schema": {"name": "x", "schema": ' + b'{"a":' * 300 + b"1" + b"}" * 300 + b"}}}",
     "nested more than 100 levels deep"),
    (json.dumps({"model": "laneway", "messages": [{"role": "user", "content": "hi"}],
                 "metadata": {"conversation_id": "c" * 513}}).encode(), "`metadata.conversation_id`: 513 characters"),
    (json.dumps({"model": "laneway", "messages": [{"role": "user", "content": "hi"}],
                 "metadata": {"notes": "n" * 5000}}).encode(), "`metadata.notes`: 5000 characters, more than 512"),
    (json.dumps({"model": "laneway", "messages": [{"role": "user", "content": "hi"}],
                 "metadata": {f"k{i}": i for i in range(65)}}).encode(), "`metadata` has 65 keys, more than 64"),
    (json.dumps({"model": "laneway", "messages": [{"role": "user", "content": "hi"}],
                 "metadata": {"blob": [["x" * 400] * 50]}}).encode(), "`metadata` takes more than 16384 bytes"),
    (b'{"model": "laneway", "messages": [{"role": "user", "content": 5}]}',
     "`messages[0].content` must be a string or a list of content parts (text, image, file or audio), got 5"),
    (b'{"model": "laneway", "messages": [{"role": "wizard", "content": "hi"}]}', "`messages[0].role`"),
    (b'{"model": "laneway", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e12}', "`max_tokens`"),
    (b'{"model": "laneway", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', "`stream`"),
    (b'{"model": "laneway", "messages": [{"role": "user", "content": "hi"}], "metadata": []}', "`metadata`"),
    # as OpenAI refuses them: else one was dropped without a word
    (b'{"model": "laneway", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 3}',
     "send `logprobs: true` with it"),
    (b'{"model": "laneway", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50, '
     b'"max_completion_tokens": 500}', "not both"),
    # a function tool without a name went to an OpenAI-compatible model as it was, for the upstream's 400
    (b'{"model": "laneway", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", '
     b'"function": {"parameters": {}}}]}', '`tools[0]` must be `{"type": "function", "function": {"name": ...}}`'),
    (b'{"model": "laneway", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", '
     b'"function": {"name": "ok"}}, {"type": "function"}]}', "`tools[1]` must be"),
])
def test_malformed_bodies_get_a_clear_400(live: LiveGateway, data: bytes, needle: str) -> None:
    status, body = raw_post(live, data)
    assert status == 400 and needle in body["error"]["message"]


def test_a_whole_number_seed_written_with_a_point_is_that_number(live: LiveGateway) -> None:
    """JSON has one number type: `max_tokens: 64.0` was taken, `seed: 1.0` refused."""
    status, body = raw_post(live, json.dumps({"model": "laneway", "messages": [{"role": "user", "content": "hi"}],
                                              "seed": 7.0}).encode())
    assert status == 200, body
    status, body = raw_post(live, json.dumps({"model": "laneway", "messages": [{"role": "user", "content": "hi"}],
                                              "seed": 7.5}).encode())
    assert status == 400 and "`seed` must be a whole number" in body["error"]["message"]
    for huge in (b"1e30", b"1" + b"0" * 30, b"-1e20"):  # past 64 bits: was a 500 from the encoder
        status, body = raw_post(live, b'{"model": "laneway", "messages": [{"role": "user", "content": "hi"}], '
                                      b'"seed": ' + huge + b"}")
        assert status == 400 and body["error"]["param"] == "seed", (huge, body)


def test_truncated_body_does_not_hang_the_connection(live: LiveGateway) -> None:
    host, port = live.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"model\"")
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        answer = sock.recv(1024)  # a hang would raise a timeout here
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4")
    status, _ = raw_post(live, b'{"model": "laneway", "messages": [{"role": "user", "content": "still up"}]}')
    assert status == 200


@pytest.mark.parametrize("extra", [
    {"temperature": None, "stream": None, "user": None, "n": None, "metadata": None},
    {"metadata": {"ticket": {"id": 7}, "tags": ["a", "b"], "note": None}},
    {"messages": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}, {"text": "there"}]},
                  {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
                  {"role": "user", "content": "please"}]},
])
def test_what_the_gateway_takes_the_openapi_document_allows(live: LiveGateway, extra: dict[str, Any]) -> None:
    """Nulls for optional fields, metadata values of any JSON type, `input_text` and `refusal` parts: the gateway
    answered them, the document called them invalid."""
    import jsonschema

    with urllib.request.urlopen(live.url + "/openapi.json", timeout=30) as answer:
        document = json.loads(answer.read())
    schema = document["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    body = {"model": "laneway", "messages": [{"role": "user", "content": "hi"}], **extra}
    jsonschema.validate(body, schema)
    assert raw_post(live, json.dumps(body).encode())[0] == 200


def test_the_openapi_document_lists_every_endpoint_the_gateway_serves(live: LiveGateway) -> None:
    """The operator's endpoints were missing: a client generated from the document had no `/metrics`,
    `/admin/stats` or `/admin/reload`, and the fuzzing below never reached them."""
    from laneway.server._app import App

    with urllib.request.urlopen(live.url + "/openapi.json", timeout=30) as answer:
        document = json.loads(answer.read())
    assert live.gateway is not None
    app = App(live.gateway)
    served = {(path, "get") for path in app._get if path != "/openapi.json"} | {(p, "post") for p in app._post}
    served |= {("/v1/chat/completions", "post"), ("/v1/models/{model}", "get")}
    listed = {(path, method) for path, operations in document["paths"].items() for method in operations}
    assert served <= listed, served - listed
    admin = document["paths"]["/admin/stats"]["get"]
    assert {"adminKey": []} in admin["security"] and {p["name"] for p in admin["parameters"]} == {"since", "until"}
    assert set(document["components"]["securitySchemes"]) == {"clientKey", "adminKey"}


def test_schemathesis_finds_no_server_errors_or_schema_violations(live: LiveGateway) -> None:
    schema = schemathesis.openapi.from_url(live.url + "/openapi.json")
    schema.config.generation.update(max_examples=25)
    failures = []
    for operation in schema.get_all_operations():
        test = operation.ok().as_strategy()

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=test)
        def run(case: Any) -> None:
            response = case.call(base_url=live.url, timeout=30)
            # Whether tools, media parts and structured outputs are accepted depends on the route's models
            # (a 400 says which cannot carry them), so a schema-valid request may be refused.
            case.validate_response(response, excluded_checks=[positive_data_acceptance])

        try:
            run()
        except Exception as error:  # collected so every operation is checked
            failures.append(f"{operation.ok().label}: {error}")
    assert not failures, "\n".join(failures)


def test_whole_numbers_written_with_a_decimal_point_are_whole_for_n_and_top_logprobs() -> None:
    """`seed: 7.0` and `max_tokens: 64.0` were taken as whole, `n: 1.0` refused with "`n` must be 1" and
    `top_logprobs: 2.0` with "must be a whole number, got 2.0"."""
    from laneway.errors import InvalidRequest
    from laneway.request import decode

    base = {"model": "laneway", "messages": [{"role": "user", "content": "hi"}]}
    request = decode(json.dumps({**base, "n": 1.0, "logprobs": True, "top_logprobs": 2.0}).encode(), 100)
    assert request.params["top_logprobs"] == 2 and isinstance(request.params["top_logprobs"], int)
    with pytest.raises(InvalidRequest) as refused:
        decode(json.dumps({**base, "n": 2.0}).encode(), 100)
    assert refused.value.param == "n"
