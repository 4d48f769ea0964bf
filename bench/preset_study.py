"""The built-in study end to end through the service: POST {"preset": NAME}, let the workers
run it, print the comparison as a markdown table.

    .venv/bin/python bench/preset_study.py [adding-mitigations] [--workers 2]
"""

import argparse
import time

from service import service, wait_sweep


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("preset", nargs="?", default="adding-mitigations")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with service(args.workers) as (client, desc):
        t0 = time.perf_counter()
        resp = client.post("/v1/sweeps", json={"preset": args.preset})
        assert resp.status_code == 202, resp.text
        body = wait_sweep(client, resp.json()["id"])
        wall = time.perf_counter() - t0
    print(
        f"preset {args.preset!r}: {body['experiments']} experiments, {args.workers} workers, "
        f"{desc}, {wall:.0f} s; counts {body['counts']}"
    )
    print()
    print(
        "| rank | variant | T | solved | val MSE mean ± std | steps to solve | diverged | "
        "verdicts | horizon |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for p in sorted(body["points"], key=lambda p: (p["params"].get("task.seq_len", 0), p["rank"])):
        s = p["stats"]
        loss = s["final_val_loss"]
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted(s["verdicts"].items())) or "-"
        print(
            f"| {p['rank']} | {p['params'].get('variant', '-')} | "
            f"{p['params'].get('task.seq_len', '-')} | {s['solved']}/{s['finished']} | "
            f"{fmt(loss['mean'], '.4f')} ± {fmt(loss['std'], '.4f')} | "
            f"{fmt(s['steps_to_solve']['mean'], '.0f')} | {s['diverged']} | {verdicts} | "
            f"{fmt(s['effective_horizon']['mean'], '.0f')} |"
        )
    print()
    for e in body["effects"]:
        print(f"- {e['summary']}")


if __name__ == "__main__":
    main()
