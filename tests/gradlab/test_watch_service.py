"""gradlab.watch against the real service: an external run end to end through the in-process
app (both backends), and through uvicorn on loopback with the API stopped for a few seconds in
the middle of the run (the loop does not wait, every batch arrives once, in order).
bench/watch_outage.py is the long version (60 s)."""

from __future__ import annotations

import statistics
import time

import httpx
import pytest
import torch
from sqlalchemy import func, select
from torch import nn

import gradlab
from core.tables import ExternalBatch
from tests.serving import free_port, uvicorn


class CharLSTM(nn.Module):
    def __init__(self, vocab: int = 8, hidden: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 8)
        self.lstm = nn.LSTM(8, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(x))
        return self.head(out)


def train_steps(run, model, opt, steps: int, seed: int = 0) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        x = torch.randint(0, 8, (4, 20), generator=g)
        y = torch.roll(x, 1, dims=1)  # predict the previous symbol: learnable
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        run.log(loss=loss)
        times.append(time.perf_counter() - t0)
    return times


def test_an_external_run_end_to_end_in_process(client, sessions, one_torch_thread) -> None:
    torch.manual_seed(0)
    model = CharLSTM()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with gradlab.watch(model, name="char lstm", every=5, http=client, flush_every_s=0) as run:
        train_steps(run, model, opt, 30)
    exp = client.get(f"/v1/experiments/{run.id}").json()
    assert exp["status"] == "succeeded" and exp["source"] == "external"
    assert exp["progress"]["step"] == 30 and exp["summary"]["steps"] == 30
    assert exp["diagnosis"]["verdict"] in ("healthy", "vanishing", "exploding")
    assert exp["diagnosis"]["evidence"]["seq_len"] == 20
    grads = client.get(f"/v1/experiments/{run.id}/gradients").json()
    assert grads["steps"] == [0, 5, 10, 15, 20, 25]
    assert [layer["layer"] for layer in grads["temporal"]["layers"]] == [0, 1]
    assert len(grads["temporal"]["layers"][0]["values"][0]) == 20
    assert "lstm.weight_hh_l1" in grads["parameters"]
    metrics = client.get(f"/v1/experiments/{run.id}/metrics").json()
    assert metrics["steps"] == list(range(30))
    inst = client.get(f"/v1/experiments/{run.id}/instruments").json()
    assert set(inst["spectrum"]) == {"0", "1"} and set(inst["spectrum"]["0"]) == set("ifgo")
    report = client.get(f"/v1/experiments/{run.id}/report")
    assert report.status_code == 200 and "char lstm" in report.text
    with sessions() as s:
        stored = s.scalar(select(func.count()).select_from(ExternalBatch))
    assert stored == run.uploader.seq and run.stats["dropped"] == 0


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_api_down_mid_run_the_loop_goes_on_and_every_batch_arrives(
    backend, settings, api_key, sessions, tmp_path, one_torch_thread
) -> None:
    port = free_port()
    log = tmp_path / "uvicorn.log"
    torch.manual_seed(0)
    model = CharLSTM()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    key = api_key("tester")
    with uvicorn(backend.env(), log, port) as base:
        run = gradlab.watch(
            model,
            every=5,
            url=base,
            key=key,
            spool_dir=tmp_path,
            flush_every_s=0.1,
            retry_s=0.1,
            retry_max_s=0.3,
            heartbeat_s=0.5,
        )
        before = train_steps(run, model, opt, 40)
        # The run is created by the upload thread, which retries on its own schedule: on a
        # busy machine the 40 steps can end before its first answer.
        deadline = time.monotonic() + 15
        while run.id is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert run.id is not None
    # the API is down now
    during, t0 = [], time.monotonic()
    while time.monotonic() - t0 < 3.0:
        during += train_steps(run, model, opt, 5, seed=len(during))
    assert run.uploader.down_since is not None and run.stats["spooled"] > 0
    with uvicorn(backend.env(), log, port):
        after = train_steps(run, model, opt, 20, seed=1)
        done = run.finish()
        assert done is not None and done["status"] == "succeeded"
        steps = 40 + len(during) + 20
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as http:
            metrics = http.get(f"/v1/experiments/{run.id}/metrics").json()
    assert metrics["steps"] == list(range(steps))  # every point once, in order
    with sessions() as s:
        stored = s.scalar(select(func.count()).select_from(ExternalBatch))
    assert stored == run.uploader.seq and run.stats["dropped"] == 0
    assert not list(tmp_path.glob("gradlab-*.jsonl"))  # the spool was emptied
    # the loop never waited on the network: no step near a request timeout, and the
    # median step during the outage like the one before it (generous: a shared machine)
    assert max(during) < 1.0
    assert statistics.median(during) < 2.0 * statistics.median(before + after)
