"""Where Laneway's CPU goes per request, and what telemetry costs.

1. CPU per request (the scheduler's CPU time of the process over requests answered) for the full
   config (metrics and exchange log on) and the bare one (both off), each offered ~1,000
   requests/s, open loop, both loaded at the same time in each round: the difference is
   telemetry's cost per request, reported as the difference of the medians and as the median of
   the per-round differences.
2. A py-spy profile of the full config under wrk at 32 connections: top frames by own time and by
   inclusive time, as shares of samples.

Run (as root, from the repository root; needs `pip install py-spy` in .venv):
    .venv/bin/python bench/profile_gateway.py [--rate 1000] [--seconds 10] [--profile-seconds 12]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from contenders import CONTENDERS, LOAD_CORE, ROOT, VENV_PYTHON, Contender, Fleet
from measure import PAYLOADS, wrk_run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile-seconds", type=int, default=12)
    parser.add_argument("--json", default="var/bench/profile.json")
    args = parser.parse_args()
    chosen = [c for c in CONTENDERS if c.name in ("laneway-full", "laneway-bare")]
    with Fleet(chosen) as fleet:
        if fleet.failed:
            raise SystemExit(f"could not start: {fleet.failed}")
        cpu: dict[str, list[dict[str, float]]] = {c.name: [] for c in chosen}
        for _ in range(args.rounds):
            for name, figures in paced_cpu_together([fleet.get(c.name) for c in chosen], args.rate,
                                                    args.seconds).items():
                cpu[name].append(figures)
        profile = py_spy(fleet.get("laneway-full"), args.profile_seconds)
    report = {"cpu_us_per_request": cpu, "profile": profile, **telemetry_cost(cpu)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(render(report))
    return 0


def paced_cpu(contender: Contender, rate: float, seconds: float) -> dict[str, float]:
    """Process CPU µs per request while `laneway loadtest` offers `rate` requests/s.

    At most 64 connections, so a backlog waits in the client's pool instead of costing the gateway
    new connections: the figure is the cost of a request, not of connection churn."""
    return paced_cpu_together([contender], rate, seconds)[contender.name]


def paced_cpu_together(chosen: list[Contender], rate: float, seconds: float) -> dict[str, dict[str, float]]:
    """`paced_cpu` for several contenders at once, each offered `rate` by its own load generator.

    CPU time per unit of work drifts on a shared machine by ±15 % from one round to the next (the
    same config measured 274 to 386 µs per request in consecutive rounds); contenders measured in
    the same seconds see the same drift, so their difference keeps only what differs between them."""
    with contextlib.ExitStack() as stack:
        outs = {c.name: Path(stack.enter_context(tempfile.NamedTemporaryFile(suffix=".json")).name) for c in chosen}
        return _paced_cpu_together(chosen, rate, seconds, outs)


def _paced_cpu_together(chosen: list[Contender], rate: float, seconds: float,
                        outs: dict[str, Path]) -> dict[str, dict[str, float]]:
    before = {c.name: (c.cpu_seconds(), c.main_thread_cpu_seconds(), c.sampled_cpu_seconds()) for c in chosen}
    loads = [subprocess.Popen(
        ["taskset", "-c", LOAD_CORE, VENV_PYTHON, "-m", "laneway.loadtest", "--url", c.url, "--rate", f"{rate:g}",
         "--duration", f"{seconds:g}", "--payloads", str(PAYLOADS), "--max-inflight", "64", "--quiet",
         "--seed", "1", "--json", str(outs[c.name])],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}) for c in chosen]
    for load in loads:
        _, error = load.communicate()
        if load.returncode != 0:
            raise SystemExit(f"laneway loadtest failed: {error.decode(errors='replace')[-2000:]}")
    figures = {}
    for c in chosen:
        cpu, loop, sampled = before[c.name]
        used, loop_used = c.cpu_seconds() - cpu, c.main_thread_cpu_seconds() - loop
        sampled = c.sampled_cpu_seconds() - sampled
        data = json.loads(outs[c.name].read_text())
        answered = data["all"]["requests"]
        figures[c.name] = {
            "requests": answered, "rps": data["all"]["throughput_rps"], "errors": data["all"]["errors"],
            "cpu_us_per_request": used / answered * 1e6, "cpu_share": used / data["wall_s"],
            "other_threads_us_per_request": (used - loop_used) / answered * 1e6,
            "sampled_cpu_us_per_request": sampled / answered * 1e6,
            "p50_ms": data["all"]["latency_ms"]["p50"], "client_cpu_share": data["client"]["cpu_share"]}
    return figures


def telemetry_cost(cpu: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Medians; and the per-round differences (full and bare run at the same time in each round, so a
    slow spell of the shared machine hits both), which vary far less than the rounds themselves."""
    full = [r["cpu_us_per_request"] for r in cpu["laneway-full"]]
    bare = [r["cpu_us_per_request"] for r in cpu["laneway-bare"]]
    median_full, median_bare = statistics.median(full), statistics.median(bare)
    paired = sorted(f - b for f, b in zip(full, bare, strict=True))
    direct = statistics.median(r["other_threads_us_per_request"] for r in cpu["laneway-full"])
    return {"full_us": median_full, "bare_us": median_bare, "telemetry_us": median_full - median_bare,
            "telemetry_share_of_full": (median_full - median_bare) / median_full,
            "paired_differences_us": paired, "paired_median_us": statistics.median(paired),
            "paired_share_of_full": statistics.median(paired) / median_full,
            "writer_thread_us": direct}


def py_spy(contender: Contender, seconds: int) -> dict[str, Any]:
    spy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
    pid = next((p for p in contender.pids() if _is_python(p)), 0)
    with tempfile.NamedTemporaryFile(suffix=".txt") as out:
        recorder = subprocess.Popen(["taskset", "-c", LOAD_CORE, spy, "record", "-p", str(pid),
                                     "-d", str(seconds), "-r", "250", "-f", "raw", "--nonblocking",
                                     "-o", out.name],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        load = wrk_run(contender.url, 32, seconds + 1)
        recorder.wait()
        stacks = Path(out.name).read_text().splitlines()
    return {"requests_per_s_while_profiled": load["rps"], **top_frames(stacks)}


def _is_python(pid: int) -> bool:
    try:
        return "python" in Path(f"/proc/{pid}/comm").read_text()
    except OSError:
        return False


def top_frames(stacks: list[str], n: int = 18) -> dict[str, Any]:
    """Own and inclusive shares of samples per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in stacks:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_short(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples = int(count)
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    return {"samples": total,
            "own": [(f, round(c / total * 100, 1)) for f, c in own.most_common(n)],
            "inclusive": [(f, round(c / total * 100, 1)) for f, c in inclusive.most_common(n * 2)]}


def _short(frame: str) -> str:
    """`func (path/to/file.py:12)` → `func (file.py)`: one entry per function, not per line."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if "laneway" in parts else Path(path).name
    return f"{name} ({short})"


def render(report: dict[str, Any]) -> str:
    lines = ["CPU per request at the offered rate (median of rounds):"]
    for name, runs in report["cpu_us_per_request"].items():
        lines.append(f"  {name:14} " + ", ".join(f"{r['cpu_us_per_request']:.0f} us ({r['rps']:.0f} req/s)"
                                                   for r in runs))
        threads = statistics.median(r["other_threads_us_per_request"] for r in runs)
        lines.append(f"  {'':14} of which threads other than the event loop's: {threads:.1f} us")
    lines.append(f"  telemetry, difference of medians: {report['telemetry_us']:.1f} us/request = "
                 f"{report['telemetry_share_of_full'] * 100:.1f} % of the full config's {report['full_us']:.0f} us")
    paired = ", ".join(f"{d:.0f}" for d in report["paired_differences_us"])
    lines.append(f"  telemetry, median of the per-round differences: {report['paired_median_us']:.1f} us/request = "
                 f"{report['paired_share_of_full'] * 100:.1f} % (differences: {paired})")
    profile = report["profile"]
    rate = profile["requests_per_s_while_profiled"]
    lines.append(f"py-spy: {profile['samples']} samples at {rate:.0f} req/s")
    lines += ["  own time:"] + [f"    {share:5.1f} %  {frame}" for frame, share in profile["own"]]
    lines += ["  inclusive:"] + [f"    {share:5.1f} %  {frame}" for frame, share in profile["inclusive"]]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
