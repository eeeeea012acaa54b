"""The `knowledge` command: `knowledge build NAME SOURCE... --out DIR` and `knowledge search DIR QUERY`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from laneway.config import MIN_CHUNK_TOKENS
from laneway.errors import ConfigError
from laneway.flags import bounded
from laneway.retrieval._knowledge_base import DEFAULT_CHUNK_TOKENS, KnowledgeBase


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `knowledge` and its subcommands; each sets `func` to a handler returning an exit code."""
    knowledge = subparsers.add_parser("knowledge", help="build and query retrieval knowledge bases")
    commands = knowledge.add_subparsers(dest="knowledge_command", metavar="ACTION", required=True)

    build = commands.add_parser("build", help="index source documents into a knowledge base directory")
    build.add_argument("name", help="the knowledge base's name, as routes refer to it")
    build.add_argument("sources", nargs="+", type=Path, help="Markdown, JSON or CSV files")
    build.add_argument("--out", required=True, type=Path, help="directory to write the index to")
    build.add_argument("--chunk-tokens", type=bounded(MIN_CHUNK_TOKENS, whole=True), default=DEFAULT_CHUNK_TOKENS,
                       help=f"words per passage at most (at least {MIN_CHUNK_TOKENS}; default: %(default)s)")
    build.set_defaults(func=build_command)

    search = commands.add_parser("search", help="search a built knowledge base")
    search.add_argument("directory", type=Path, help="directory written by `knowledge build`")
    search.add_argument("query", help="the customer's message")
    search.add_argument("--top-k", type=bounded(1, whole=True), default=3, help="passages to return at most")
    search.add_argument("--min-score", type=bounded(0), default=0.0, help="lowest BM25 score to return")
    search.add_argument("--json", action="store_true", help="print the passages as JSON")
    search.set_defaults(func=search_command)


def build_command(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        knowledge_base = KnowledgeBase.build(args.name, args.sources, chunk_tokens=args.chunk_tokens)
        knowledge_base.save(args.out)
    except ConfigError as error:
        print(f"laneway knowledge build: {error.message}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"laneway knowledge build: cannot write the index to `{args.out}`: {error.strerror or error}; "
              "`--out` names a directory (created if missing)", file=sys.stderr)
        return 2
    elapsed_ms = (time.perf_counter() - started) * 1000
    print(
        f"built `{knowledge_base.name}`: {len(knowledge_base)} passages from {len(args.sources)} "
        f"source(s) in {elapsed_ms:.0f} ms -> {args.out}"
    )
    return 0


def search_command(args: argparse.Namespace) -> int:
    try:
        knowledge_base = KnowledgeBase.load(args.directory)
        passages = knowledge_base.search(args.query, top_k=args.top_k, min_score=args.min_score)
    except ConfigError as error:
        print(f"laneway knowledge search: {error.message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([asdict(passage) for passage in passages], indent=2, ensure_ascii=False))
        return 0
    if not passages:
        print("no passage matched", file=sys.stderr)
    for rank, passage in enumerate(passages, start=1):
        print(f"{rank}. {passage.score:6.2f}  {passage.id}  {passage.title}  ({passage.source})")
    return 0
