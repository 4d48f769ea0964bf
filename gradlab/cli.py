"""`gradlab`: the command line on top of client.Client.

    gradlab submit spec.json --wait      # 202, then poll to the end; prints the experiment
    gradlab show ID
    gradlab traces ID --out traces.json  # metrics, gradients, instruments, events
    gradlab export ID --tensorboard logs # then: tensorboard --logdir logs
    gradlab export ID --csv traces.csv   # every scalar series as step,name,value
    gradlab sweep sweep.json --wait
    gradlab report ID --out report.html  # self-contained HTML (add --sweep for a sweep)
    gradlab plot ID temporal --out temporal.png
    gradlab datasets upload data.npz --name sensors   # then task {"name": "dataset", "id": ...}
    gradlab datasets list | show ID | delete ID

The URL and key come from --url / --key, else GRADLAB_URL / GRADLAB_KEY, else
http://127.0.0.1:8000 and data/api_key. A spec file `-` is read from standard input. Exit
status: 0 done (with --wait: the run succeeded, or the sweep finished), 1 an API or network
error (the problem goes to stderr), 2 a usage error, 3 the awaited run ended otherwise
(diverged, failed, cancelled)."""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from gradlab.client import ApiError, Client, UnsafeArchive, default_url


def _load(path: str) -> Any:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return json.loads(text) if text.strip() else {}


def _dump(data: Any, out: str | None) -> None:
    text = json.dumps(data, indent=2)
    if out and out != "-":
        Path(out).write_text(text + "\n")
        print(f"wrote {out}", file=sys.stderr)
    else:
        print(text)


def _write(data: bytes | str, out: str) -> None:
    path = Path(out)
    path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
    print(f"wrote {out}", file=sys.stderr)


def _progress(quiet: bool):
    last: list[Any] = [None]

    def show(exp: dict[str, Any]) -> None:
        p = exp.get("progress") or {}
        line = f"{exp['id'][:8]} {exp['status']} step {p.get('step')}/{p.get('total_steps')}"
        if not quiet and line != last[0]:
            print(line, file=sys.stderr)
            last[0] = line

    return show


def _sweep_progress(quiet: bool):
    last: list[Any] = [None]

    def show(sweep: dict[str, Any]) -> None:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(sweep["counts"].items()))
        line = f"sweep {sweep['id'][:8]} {sweep['status']}: {counts}"
        if not quiet and line != last[0]:
            print(line, file=sys.stderr)
            last[0] = line

    return show


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gradlab", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help=f"API base URL (GRADLAB_URL; default {default_url()})")
    p.add_argument("--key", help="API key (GRADLAB_KEY; default: data/api_key)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("submit", help="submit an experiment spec (JSON file, - for stdin)")
    s.add_argument("spec")
    s.add_argument("--wait", action="store_true", help="poll until it ends")
    s.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
    s.add_argument("--poll", type=float, default=1.0, help="seconds between polls (1)")
    s.add_argument("--idempotency-key")

    s = sub.add_parser("show", help="an experiment: status, progress, summary, diagnosis")
    s.add_argument("id")

    s = sub.add_parser("traces", help="an experiment's recorded traces as one JSON document")
    s.add_argument("id")
    s.add_argument("--out", help="file to write (default: stdout)")
    s.add_argument("--max-points", type=int, help="thin each series to at most this many")

    s = sub.add_parser("export", help="an experiment's scalar series for TensorBoard or as CSV")
    s.add_argument("id")
    to = s.add_mutually_exclusive_group(required=True)
    to.add_argument("--tensorboard", metavar="LOGDIR", help="extract its run into this folder")
    to.add_argument("--csv", metavar="FILE", help="write step,name,value rows (- for stdout)")
    s.add_argument("--prefix", help="only series whose stored name starts so (e.g. grad/)")

    s = sub.add_parser("sweep", help="submit a sweep (JSON file, - for stdin)")
    s.add_argument("spec")
    s.add_argument("--wait", action="store_true", help="poll until every run has ended")
    s.add_argument("--timeout", type=float)
    s.add_argument("--poll", type=float, default=2.0)

    s = sub.add_parser("report", help="the HTML report page of an experiment (or a sweep)")
    s.add_argument("id")
    s.add_argument("--sweep", action="store_true", help="ID is a sweep")
    s.add_argument("--out", required=True)

    s = sub.add_parser("plot", help="one plot of an experiment")
    s.add_argument("id")
    s.add_argument("name", choices=["temporal", "loss", "gradients", "spectrum"])
    s.add_argument("--out", required=True, help="file.png or file.svg")

    s = sub.add_parser("datasets", help="your own sequences: upload, list, show, delete")
    ds = s.add_subparsers(dest="action", required=True)
    u = ds.add_parser("upload", help="an .npz with x (N, T, F), y and optionally lengths")
    u.add_argument("file")
    u.add_argument("--name", help="default: the file's name")
    u.add_argument("--kind", choices=["classification", "regression"], help="default: inferred")
    ds.add_parser("list", help="your datasets, newest first")
    for action in ("show", "delete"):
        ds.add_parser(action).add_argument("id")
    return p


def run(args: argparse.Namespace, gl: Client) -> int:
    cmd = args.command
    if cmd == "submit":
        exp = gl.submit(_load(args.spec), idempotency_key=args.idempotency_key)
        if args.wait:
            exp = gl.wait(
                exp["id"], poll=args.poll, timeout=args.timeout, on_update=_progress(args.quiet)
            )
        _dump(exp, None)
        return 0 if not args.wait or exp["status"] == "succeeded" else 3
    if cmd == "show":
        _dump(gl.experiment(args.id), None)
    elif cmd == "traces":
        _dump(gl.traces(args.id, args.max_points), args.out)
    elif cmd == "export" and args.tensorboard:
        for path in gl.export_tensorboard(args.id, args.tensorboard, args.prefix):
            print(f"wrote {path}", file=sys.stderr)
        print(f"look with: tensorboard --logdir {args.tensorboard}", file=sys.stderr)
    elif cmd == "export":
        text = gl.export_csv(args.id, args.prefix)
        sys.stdout.write(text) if args.csv == "-" else _write(text, args.csv)
    elif cmd == "sweep":
        sweep = gl.submit_sweep(_load(args.spec))
        if args.wait:
            sweep = gl.wait_sweep(
                sweep["id"],
                poll=args.poll,
                timeout=args.timeout,
                on_update=_sweep_progress(args.quiet),
            )
        _dump(sweep, None)
    elif cmd == "report":
        _write(gl.sweep_report(args.id) if args.sweep else gl.report(args.id), args.out)
    elif cmd == "datasets":
        return datasets(args, gl)
    elif cmd == "plot":
        fmt = "svg" if args.out.endswith(".svg") else "png"
        _write(gl.plot(args.id, args.name, fmt), args.out)
    return 0


def datasets(args: argparse.Namespace, gl: Client) -> int:
    if args.action == "upload":
        _dump(gl.upload_dataset(args.file, args.name, args.kind), None)
    elif args.action == "list":
        _dump(gl.datasets(), None)
    elif args.action == "show":
        _dump(gl.dataset(args.id), None)
    else:
        gl.delete_dataset(args.id)
        print(f"deleted {args.id}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None, http: httpx.Client | None = None) -> int:
    """The console script. `http`: send through this httpx.Client (tests)."""
    args = parser().parse_args(argv)
    try:
        with Client(args.url, args.key, http=http) as gl:
            return run(args, gl)
    except ApiError as exc:
        print(f"gradlab: {exc}", file=sys.stderr)
        for err in exc.problem.get("errors") or []:
            print(f"  {err.get('field')}: {err.get('message')}", file=sys.stderr)
        return 1
    except (
        httpx.HTTPError,
        TimeoutError,
        OSError,
        json.JSONDecodeError,
        tarfile.TarError,
        UnsafeArchive,
    ) as exc:
        print(f"gradlab: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
