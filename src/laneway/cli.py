"""The `laneway` command: serve, check, sim, and the tools each part registers."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .errors import ConfigError
from .flags import seed

if TYPE_CHECKING:
    from .config import Route

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = _parser()  # imports every command's module: most of the start-up, and Ctrl-C may come
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        return 130
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        code: int = args.func(args)
    except ConfigError as error:
        print(f"laneway: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`laneway report | head`): what is left of the output has nowhere to go.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="laneway", description="OpenAI-compatible LLM routing gateway")
    sub = parser.add_subparsers(metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the gateway (on the simulated fleet by default)")
    serve.add_argument("--config", help="routing file (default: the embedded simulated fleet)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=port_number, default=8080)
    serve.add_argument("--workers", type=worker_count, default=1,
                       help="gateway processes sharing the port (default 1)")
    serve.add_argument("--allow-unauthenticated", action="store_true",
                       help="listen on a non-loopback address without client keys")
    serve.set_defaults(func=_serve)
    keys = sub.add_parser("keys", help="client API keys")
    keys_sub = keys.add_subparsers(metavar="ACTION", required=True)
    new = keys_sub.add_parser("new", help="print a fresh key and the entry to paste under `keys:`")
    new.add_argument("name")
    new.set_defaults(func=_new_key)
    check = sub.add_parser("check", help="validate a routing file and print its route table")
    check.add_argument("file", nargs="?", help="routing file (default: the embedded default)")
    check.add_argument("--config", dest="config_file", metavar="FILE", help="the same, named as `serve` names it")
    check.set_defaults(func=_check)
    sim = sub.add_parser("sim", help="run the simulated fleet alone")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=port_number, default=9090, help="0 picks a free port")
    sim.add_argument("--fleet", help="fleet file (default: the built-in one)")
    sim.add_argument("--seed", type=seed, default=7)
    sim.add_argument("--parent", type=int, help=argparse.SUPPRESS)  # stop once this process is gone
    sim.set_defaults(func=_sim)
    for register in _extensions():
        register(sub)
    return parser


def _extensions() -> list[Register]:
    """Each part registers its own commands; imported here, not at module load, to keep start-up fast."""
    from .intents import add_commands as intents
    from .loadtest import add_commands as loadtest
    from .replay import add_commands as replay
    from .retrieval import add_commands as knowledge
    from .telemetry import add_commands as telemetry

    return [intents, knowledge, telemetry, replay, loadtest]


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"`{text}` is not a TCP port (0-65535)")
    return port


def worker_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"`{text}` is not a number of worker processes (1 or more; "
                                         "about one per core)")
    return count


def _port_free(host: str, port: int) -> bool:
    """False (after saying so) if `host:port` cannot be bound: checked before anything starts, so a
    taken port is one clear line rather than a server that announced itself and then failed."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        print(f"laneway: --host `{host}` does not resolve: {error.strerror}", file=sys.stderr)
        return False
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server's own socket
        try:
            probe.bind(address)
        except OSError as error:
            print(f"laneway: cannot listen on {host}:{port}: {error.strerror}; stop what holds it or pick "
                  "another with --port", file=sys.stderr)
            return False
    return True


def _run(coro: object) -> None:
    import uvloop

    uvloop.run(coro)  # type: ignore[arg-type]


def _serve(args: argparse.Namespace) -> int:
    from .server import serve, serve_workers

    if not _port_free(args.host, args.port):
        return 2
    if args.workers > 1:
        return serve_workers(args.config, args.host, args.port, args.workers, args.allow_unauthenticated)
    _run(serve(args.config, args.host, args.port, args.allow_unauthenticated))
    return 0


def _new_key(args: argparse.Namespace) -> int:
    from .keys import hash_key, name_problem, new_key

    problem = name_problem(args.name)
    if problem:
        print(f"laneway keys new: the key name {problem}; name the client the key is for, e.g. "
              "`laneway keys new web`", file=sys.stderr)
        return 2
    key = new_key()
    print(f"key (give it to the client; it is not stored anywhere): {key}")
    print(f"keys:\n  - name: {_yaml_text(args.name)}\n    hash: \"{hash_key(key)}\"")
    return 0


def _yaml_text(text: str) -> str:
    """`text` as a YAML value: bare if YAML reads it back as that text, else double-quoted (`a: b`,
    `#x`, `yes`)."""
    import json

    import yaml

    try:
        plain = yaml.safe_load(f"name: {text}") == {"name": text}
    except yaml.YAMLError:
        plain = False
    return text if plain else json.dumps(text, ensure_ascii=False)


def _sim(args: argparse.Namespace) -> int:
    from .sim import serve_forever

    if args.port and not _port_free(args.host, args.port):
        return 2
    _run(serve_forever(args.host, args.port, args.fleet, args.seed, parent=args.parent))
    return 0


def _check(args: argparse.Namespace) -> int:
    from .config import load_config, unset_variables
    from .runtime import load_files

    if args.file and args.config_file:
        print(f"laneway check: give the routing file once, not both `{args.file}` and `--config {args.config_file}`",
              file=sys.stderr)
        return 2
    config = load_config(args.file or args.config_file)
    load_files(config)  # knowledge sources and the intent model, as `serve` reads them
    print(f"{config.source}: OK - {len(config.routes)} routes, {len(config.models)} models")
    print(route_table(config))
    for warning in config.warnings:
        print(f"warning: {warning}")
    for missing in unset_variables(config):
        print(f"warning (environment): {missing}")
    return 0


def route_table(config: object) -> str:
    from .config import Config

    assert isinstance(config, Config)
    rows = [("#", "name", "path", "matcher", "target", "fallbacks", "lanes")]
    for r in config.routes:
        matcher = r.matcher.source if r.has_matcher else "(default)"
        fallbacks = " ".join(filter(None, (", ".join(r.fallbacks),
                                           f"[long context: {r.long_context}]" if r.long_context else "")))
        rows.append((str(r.index), r.name, r.path, matcher, r.target, fallbacks or "-", _lanes(r) or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def _lanes(route: Route) -> str:
    """A route's lanes in a few words: `canary gpt-5-mini 5%, shadow x 10%, cascade -> y, retrieval billing`."""
    parts = [f"canary {c.target} {c.weight:.0%}" for c in route.canaries]
    parts += [f"shadow {s.target} {s.sample:.0%}" for s in route.shadows]
    if route.cascade is not None:
        parts.append(f"cascade < {route.cascade.confidence:g} -> {route.cascade.escalate_to}")
    if route.retrieval is not None:
        miss = f" (miss -> {route.retrieval.on_miss})" if route.retrieval.on_miss else ""
        parts.append(f"retrieval {route.retrieval.knowledge}{miss}")
    if route.cache.mode != "off":
        parts.append(f"cache {route.cache.mode}")
    if route.trim != "none":
        parts.append(f"trim {route.trim}")
    return ", ".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
