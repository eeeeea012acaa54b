"""The README's examples run, so it cannot rot: YAML blocks load, commands work, the client snippet answers."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from _live import live_gateway
from laneway.config import default_config_text, parse_config
from laneway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def test_readme_gives_the_two_setup_commands() -> None:
    first = blocks("bash")[0]
    assert "make serve" in first and "make test" in first
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^serve:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


@pytest.mark.parametrize("block", blocks("yaml"))
def test_readme_yaml_blocks_are_valid_configs(block: str) -> None:
    assert parse_config(block).routes


DOC_ROUTING_FILES = [(doc.name, block) for doc in sorted((ROOT / "docs").glob("*.md"))
                     for block in re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S)
                     if re.search(r"^routes:", block, re.M)]


@pytest.mark.parametrize(("doc", "block"), DOC_ROUTING_FILES, ids=[doc for doc, _ in DOC_ROUTING_FILES])
def test_the_docs_routing_files_pass_the_check(doc: str, block: str) -> None:
    """As `laneway check` reads them: a matcher naming an intent the model does not know is an error."""
    try:
        parse_config(block)
    except ConfigError as error:  # only a model the reader trains first (`--out var/...`) may be missing
        assert all(issue.message.startswith("no intent model at") for issue in error.issues), str(error)


def test_readme_seed_block_is_the_shipped_example() -> None:
    assert blocks("yaml")[0] == (ROOT / "examples" / "model-routing.yaml").read_text()


def test_readme_laneway_commands_run() -> None:
    commands = [line.split("#")[0].strip() for block in blocks("bash") for line in block.splitlines()
                if line.startswith("laneway check")]
    assert commands
    for command in commands:
        args = shlex.split(command)[1:]
        done = subprocess.run([sys.executable, "-m", "laneway", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        assert "OK" in done.stdout


def test_readme_client_snippet_runs(sim_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    snippet = blocks("python")[0]
    with live_gateway(default_config_text(), sim_url) as live:
        exec(compile(snippet.replace("http://127.0.0.1:8080", live.url), "README.md", "exec"), {})
    model, cost = capsys.readouterr().out.splitlines()[0].split()
    assert model == "gemini-2.5-flash-lite" and float(cost) > 0
