"""`gradlab`: the command line on top of client.Client.

    gradlab submit spec.json --wait      # 202, then poll to the end; prints the experiment
    gradlab list --status running        # your experiments, newest first, one a line
    gradlab show ID                      # a summary: status, verdict and why, outcome (--json)
    gradlab cancel ID
    gradlab traces ID --out traces.json  # metrics, gradients, instruments, events
    gradlab export ID --tensorboard logs # then: tensorboard --logdir logs
    gradlab export ID --csv traces.csv   # every scalar series as step,name,value
    gradlab export ID --vectors-csv v.csv # profiles, credit, exponents as step,name,index,value
    gradlab sweep sweep.json --wait
    gradlab sweeps show ID | cancel ID
    gradlab report ID --out report.html  # self-contained HTML (add --sweep for a sweep)
    gradlab plot ID temporal --out temporal.png
    gradlab datasets upload data.npz --name sensors   # then task {"name": "dataset", "id": ...}
    gradlab datasets list | show ID | delete ID

The URL and key come from --url / --key, else GRADLAB_URL / GRADLAB_KEY, else
http://127.0.0.1:$PORT (8000 when PORT is unset) and data/api_key in this folder or the
nearest one above it (GRADLAB_KEY_FILE names another). A spec file `-` is read from stdin. Exit
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

from gradlab.client import ApiError, Client, UnsafeArchive, default_url, key_file


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
    p.add_argument("--key", help="API key (GRADLAB_KEY; default: data/api_key here or above)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("submit", help="submit an experiment spec (JSON file, - for stdin)")
    s.add_argument("spec")
    s.add_argument("--wait", action="store_true", help="poll until it ends")
    s.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
    s.add_argument("--poll", type=float, default=1.0, help="seconds between polls (1)")
    s.add_argument("--idempotency-key")

    s = sub.add_parser("list", help="your experiments, newest first, one a line")
    s.add_argument("--status", action="append", help="this status (repeat for several)")
    s.add_argument("--tag")
    s.add_argument("--name", help="part of the name")
    s.add_argument("--sweep", dest="sweep_id", help="a sweep's experiments")
    s.add_argument("--limit", type=int, default=50)
    s.add_argument("--json", action="store_true", help="the experiments as JSON")

    s = sub.add_parser("show", help="an experiment: status, verdict, outcome (--json: all)")
    s.add_argument("id")
    s.add_argument("--json", action="store_true", help="the whole experiment resource")

    s = sub.add_parser("cancel", help="cancel a queued or running experiment")
    s.add_argument("id")

    s = sub.add_parser("traces", help="an experiment's recorded traces as one JSON document")
    s.add_argument("id")
    s.add_argument("--out", help="file to write (default: stdout)")
    s.add_argument("--max-points", type=int, help="thin each series to at most this many")

    s = sub.add_parser("export", help="an experiment's series for TensorBoard or as CSV")
    s.add_argument("id")
    to = s.add_mutually_exclusive_group(required=True)
    to.add_argument("--tensorboard", metavar="LOGDIR", help="extract its run into this folder")
    to.add_argument("--csv", metavar="FILE", help="write step,name,value rows (- for stdout)")
    to.add_argument(
        "--vectors-csv",
        metavar="FILE",
        help="write the vector series (temporal profiles, ...) as step,name,index,value rows",
    )
    s.add_argument("--prefix", help="only series whose stored name starts so (e.g. grad/)")

    s = sub.add_parser("sweep", help="submit a sweep (JSON file, - for stdin)")
    s.add_argument("spec")
    s.add_argument("--wait", action="store_true", help="poll until every run has ended")
    s.add_argument("--timeout", type=float)
    s.add_argument("--poll", type=float, default=2.0)

    s = sub.add_parser("sweeps", help="a sweep: show (its points and ranking), cancel")
    sw = s.add_subparsers(dest="action", required=True)
    for action in ("show", "cancel"):
        sw.add_parser(action).add_argument("id")

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
    if cmd == "list":
        found = gl.experiments(
            status=args.status,
            tag=args.tag,
            name=args.name,
            sweep_id=args.sweep_id,
            limit=args.limit,
        )
        _dump(found, None) if args.json else print("\n".join(map(one_line, found)))
    elif cmd == "show":
        exp = gl.experiment(args.id)
        _dump(exp, None) if args.json else print(summary_lines(exp))
    elif cmd == "cancel":
        print(one_line(gl.cancel(args.id)))
    elif cmd == "sweeps":
        sweep = gl.sweep(args.id) if args.action == "show" else gl.cancel_sweep(args.id)
        _dump(sweep, None)
    elif cmd == "traces":
        _dump(gl.traces(args.id, args.max_points), args.out)
    elif cmd == "export" and args.tensorboard:
        for path in gl.export_tensorboard(args.id, args.tensorboard, args.prefix):
            print(f"wrote {path}", file=sys.stderr)
        print(f"look with: tensorboard --logdir {args.tensorboard}", file=sys.stderr)
    elif cmd == "export" and args.vectors_csv:
        text = gl.export_vectors_csv(args.id, args.prefix)
        sys.stdout.write(text) if args.vectors_csv == "-" else _write(text, args.vectors_csv)
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


def one_line(exp: dict[str, Any]) -> str:
    """id, status, step/total, verdict, name: what `gradlab list` prints for each."""
    p = exp.get("progress") or {}
    verdict = (exp.get("diagnosis") or {}).get("verdict") or "-"
    steps = f"{p.get('step')}/{p.get('total_steps')}"
    return f"{exp['id']}  {exp['status']:<9}  {steps:>13}  {verdict:<12}  {exp.get('name') or ''}"


def summary_lines(exp: dict[str, Any]) -> str:
    """What a researcher reads first: status, progress, verdict and why, outcome, the numbers."""
    d = exp.get("diagnosis") or {}
    s = exp.get("summary") or {}
    p = exp.get("progress") or {}
    spec = exp.get("spec") or {}
    task, model = spec.get("task") or {}, spec.get("model") or {}
    rows = [
        ("experiment", f"{exp['id']} {exp.get('name') or ''}".rstrip()),
        ("status", exp["status"] + (f" ({exp['error']['type']})" if exp.get("error") else "")),
        (
            "progress",
            f"{p.get('step')}/{p.get('total_steps')}"
            + (f", about {p['eta_s']:.0f} s left" if p.get("eta_s") is not None else ""),
        ),
        (
            "set-up",
            f"{model.get('cell')} {model.get('activation') or ''} "
            f"{model.get('num_layers')}x{model.get('hidden_size')}, task {task.get('name')} "
            f"{task.get('seq_len', task.get('read', ''))}".replace("  ", " "),
        ),
    ]
    if d:
        rows.append(("verdict", d.get("verdict") or "-"))
        if d.get("reason"):
            rows.append(("why", d["reason"]))
        outcome = d.get("outcome") or {}
        if outcome:
            rows.append(("outcome", outcome.get("result") or "-"))
        for m in d.get("suggestions") or []:
            rows.append(("try", f"{m.get('mitigation')}: {m.get('why')}"))
    for key in ("final_loss", "best_val_loss", "baseline_loss", "solved_at_step", "accuracy"):
        if s.get(key) is not None:
            rows.append((key, f"{s[key]:.4g}" if isinstance(s[key], float) else str(s[key])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def hint(exc: ApiError | httpx.HTTPError, url: str) -> str | None:
    """One line on what to do, for the two errors a new user meets first."""
    if isinstance(exc, ApiError) and exc.status == 401:
        where = key_file()
        found = f"the key in {where}" if where else "no key (no data/api_key found here or above)"
        return (
            f"used {found}; pass --key or set GRADLAB_KEY (`make run` prints the key and "
            "writes data/api_key)"
        )
    if isinstance(exc, httpx.ConnectError):
        return (
            f"nothing answered at {url}; is the service running (`make run`)? --url or GRADLAB_URL"
        )
    return None


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
    url = args.url or default_url()
    try:
        with Client(args.url, args.key, http=http) as gl:
            return run(args, gl)
    except ApiError as exc:
        print(f"gradlab: {exc}", file=sys.stderr)
        for err in exc.problem.get("errors") or []:
            print(f"  {err.get('field')}: {err.get('message')}", file=sys.stderr)
        if (line := hint(exc, url)) is not None:
            print(f"gradlab: {line}", file=sys.stderr)
        return 1
    except httpx.ConnectError as exc:
        print(f"gradlab: {exc}; {hint(exc, url)}", file=sys.stderr)
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
