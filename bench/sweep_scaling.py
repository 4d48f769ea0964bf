"""A sweep of 8 small experiments on 1 worker vs. 2 workers (torch limited to one thread
each), through the service: wall time from POST to the last finished experiment.

    .venv/bin/python bench/sweep_scaling.py
    BENCH_PG=postgresql+psycopg://postgres@127.0.0.1/postgres BENCH_REDIS=redis://127.0.0.1:6379/0 \
        .venv/bin/python bench/sweep_scaling.py
"""

import time

from service import service, wait_sweep

SWEEP = {
    "name": "scaling",
    "base": {
        "task": {"name": "adding", "seq_len": 50},
        "model": {"hidden_size": 64},
        "train": {"steps": 400, "batch_size": 32},
        "instrument": {"every": 10},
    },
    "grid": {"model.cell": ["rnn", "lstm"], "train.clip.mode": ["none", "norm"]},
    "seeds": [0, 1],
}


def timed(n_workers: int) -> tuple[float, str, dict]:
    with service(n_workers) as (client, desc):
        t0 = time.perf_counter()
        resp = client.post("/v1/sweeps", json=SWEEP)
        assert resp.status_code == 202, resp.text
        body = wait_sweep(client, resp.json()["id"])
        return time.perf_counter() - t0, desc, body["counts"]


def main() -> None:
    one, desc, counts1 = timed(1)
    two, _, counts2 = timed(2)
    print(
        f"backend: {desc}; 8 experiments (rnn/lstm x clip none/norm x 2 seeds, adding T=50, "
        "hidden 64, 400 steps); 1 torch thread per worker"
    )
    print(f"1 worker : {one:7.1f} s  {counts1}")
    print(f"2 workers: {two:7.1f} s  {counts2}")
    print(f"speed-up : {one / two:7.2f}x")


if __name__ == "__main__":
    main()
