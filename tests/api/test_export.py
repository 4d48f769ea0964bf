"""GET /v1/experiments/{id}/export.csv and /export/tensorboard after a real run; the
TensorBoard archive is read back with TensorBoard's own reader."""

import csv
import io
import re
import tarfile
from array import array
from datetime import datetime
from pathlib import Path

import pytest

from api.routes.export import run_name, tensorboard_tag
from tests.checks import assert_problem
from tests.checks import tensorboard_scalars as scalars
from tests.factories import SMALL, add_experiment
from tests.factories import run_finished as run


def rows(resp) -> list[dict[str, str]]:
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(resp.text)))


def test_export_csv_has_every_scalar_series(client, sessions, api_key) -> None:
    exp_id = run(sessions)
    resp = client.get(f"/v1/experiments/{exp_id}/export.csv")
    assert resp.text.startswith("step,name,value\n")
    assert f'filename="{exp_id}.csv"' in resp.headers["content-disposition"]
    table = rows(resp)
    names = {r["name"] for r in table}
    assert {"loss", "val_loss", "grad_norm_total", "grad/rnn.0.weight_hh_l0"} <= names
    assert "spectrum/0/hh/sigma_max" in names and not any(n.startswith("temporal/") for n in names)
    metrics = client.get(f"/v1/experiments/{exp_id}/metrics").json()
    loss = [r for r in table if r["name"] == "loss"]
    assert [int(r["step"]) for r in loss] == metrics["steps"]
    assert [float(r["value"]) for r in loss] == pytest.approx(metrics["loss"], rel=1e-15)
    grads = client.get(f"/v1/experiments/{exp_id}/gradients").json()["parameters"]
    hh = [float(r["value"]) for r in table if r["name"] == "grad/rnn.0.weight_hh_l0"]
    assert hh == pytest.approx(grads["rnn.0.weight_hh_l0"])

    only = rows(client.get(f"/v1/experiments/{exp_id}/export.csv", params={"prefix": "grad/"}))
    assert only and all(r["name"].startswith("grad/") for r in only)
    assert len(only) == sum(r["name"].startswith("grad/") for r in table)

    other = {"Authorization": f"Bearer {api_key('intruder')}"}
    assert_problem(client.get(f"/v1/experiments/{exp_id}/export.csv", headers=other), 404)
    assert_problem(client.get("/v1/experiments/missing/export.csv"), 404)


def test_export_of_a_queued_experiment_is_the_header_only(client, sessions) -> None:
    exp_id = add_experiment(sessions, SMALL)
    assert client.get(f"/v1/experiments/{exp_id}/export.csv").text == "step,name,value\n"


def test_nonfinite_values_are_written_as_words() -> None:
    from api.routes.export import _number

    assert [_number(v) for v in (0.5, float("nan"), float("inf"), float("-inf"))] == [
        "0.5",
        "nan",
        "inf",
        "-inf",
    ]


# -- TensorBoard --


def float32(values: list[float]) -> list[float]:
    """What TensorBoard's scalars hold: the value rounded to float32."""
    return list(array("f", values))


def tensorboard_run(resp, tmp_path: Path) -> Path:
    """The answer's archive, extracted: the one run directory it holds."""
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/gzip"
    assert int(resp.headers["content-length"]) == len(resp.content)
    with tarfile.open(fileobj=io.BytesIO(resp.content), mode="r:gz") as tar:
        names = tar.getnames()
        tar.extractall(tmp_path, filter="data")
    assert len(names) == 1 and re.fullmatch(r"[^/]+/events\.out\.tfevents\.\d+\.gradlab", names[0])
    return tmp_path / names[0].split("/")[0]


def test_export_tensorboard_holds_what_the_json_routes_serve(
    client, sessions, api_key, tmp_path: Path
) -> None:
    exp_id = run(sessions)
    resp = client.get(f"/v1/experiments/{exp_id}/export/tensorboard")
    assert f'filename="{exp_id}.tensorboard.tar.gz"' in resp.headers["content-disposition"]
    run_dir = tensorboard_run(resp, tmp_path)
    assert run_dir.name == exp_id  # unnamed: the id
    tb = scalars(run_dir)

    # every scalar series of the CSV, under its tag, with as many points
    table = rows(client.get(f"/v1/experiments/{exp_id}/export.csv"))
    counts: dict[str, int] = {}
    for r in table:
        counts[tensorboard_tag(r["name"])] = counts.get(tensorboard_tag(r["name"]), 0) + 1
    assert {tag: len(points) for tag, points in tb.items()} == counts
    assert {"loss/train", "loss/validation", "optimizer/lr", "clip/fired"} <= tb.keys()
    assert "spectrum/0/hh/sigma_max" in tb and not any(t.startswith("temporal") for t in tb)

    def steps_values(tag: str) -> tuple[list[int], list[float]]:
        return [e.step for e in tb[tag]], [e.value for e in tb[tag]]

    metrics = client.get(f"/v1/experiments/{exp_id}/metrics").json()
    assert steps_values("loss/train") == (metrics["steps"], float32(metrics["loss"]))
    val = metrics["validation"]
    assert steps_values("loss/validation") == (val["steps"], float32(val["loss"]))
    assert steps_values("optimizer/lr") == (
        metrics["lr"]["steps"],
        float32(metrics["lr"]["values"]),
    )

    grads = client.get(f"/v1/experiments/{exp_id}/gradients").json()
    assert grads["parameters"] and {f"grad_norm/{p}" for p in grads["parameters"]} == {
        t for t in tb if t.startswith("grad_norm/")
    }
    for param, values in grads["parameters"].items():
        assert steps_values(f"grad_norm/{param}") == (grads["steps"], float32(values))
    before, after = grads["global_norm"]["before_clip"], grads["global_norm"]["after_clip"]
    assert steps_values("grad_norm_global/before_clip") == (grads["steps"], float32(before))
    assert steps_values("grad_norm_global/after_clip") == (
        [s for s, v in zip(grads["steps"], after, strict=True) if v is not None],
        float32([v for v in after if v is not None]),
    )

    # wall times: within the run, in step order, the last step at the end
    exp = client.get(f"/v1/experiments/{exp_id}").json()
    start, end = (datetime.fromisoformat(exp[k]).timestamp() for k in ("started_at", "finished_at"))
    walls = [e.wall_time for e in tb["loss/train"]]
    assert walls == sorted(walls) and walls[-1] == pytest.approx(end, abs=1e-3)
    assert start < walls[0] < walls[-1]
    assert all(start <= e.wall_time <= end + 1e-3 for points in tb.values() for e in points)

    only = client.get(f"/v1/experiments/{exp_id}/export/tensorboard", params={"prefix": "grad/"})
    picked = scalars(tensorboard_run(only, tmp_path / "only"))
    assert picked.keys() == {t for t in tb if t.startswith("grad_norm/")}

    other = {"Authorization": f"Bearer {api_key('intruder')}"}
    path = f"/v1/experiments/{exp_id}/export/tensorboard"
    assert_problem(client.get(path, headers=other), 404)
    assert_problem(client.get("/v1/experiments/missing/export/tensorboard"), 404)


def test_export_tensorboard_of_a_queued_experiment_is_an_empty_run(
    client, sessions, tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    exp_id = add_experiment(sessions, SMALL)
    run_dir = tensorboard_run(client.get(f"/v1/experiments/{exp_id}/export/tensorboard"), tmp_path)
    assert scalars(run_dir) == {}
    (events_file,) = run_dir.iterdir()
    (only,) = EventFileLoader(str(events_file)).Load()
    assert only.file_version == "brain.Event:2"


def test_tensorboard_tags_and_run_names() -> None:
    from core.tables import Experiment

    assert [
        tensorboard_tag(n)
        for n in ("loss", "val_accuracy", "grad/rnn.0.weight_hh_l0", "clip/after", "clip/fired")
    ] == [
        "loss/train",
        "accuracy/validation",
        "grad_norm/rnn.0.weight_hh_l0",
        "grad_norm_global/after_clip",
        "clip/fired",
    ]
    exp_id = "0b6f6c4e-0000-4000-8000-000000000000"
    assert run_name(Experiment(id=exp_id, name=None)) == exp_id
    assert run_name(Experiment(id=exp_id, name="../../etc")) == "etc_0b6f6c4e"
    named = Experiment(id=exp_id, name="tanh rnn, adding / T=200")
    assert run_name(named) == "tanh_rnn_adding_T=200_0b6f6c4e"
    assert run_name(Experiment(id=exp_id, name="..")) == exp_id


def test_a_sweeps_runs_get_labels_and_run_names_of_their_own() -> None:
    """The sweep's runs share its name: the grid point and the seed tell them apart, in the
    overlay's legend and in TensorBoard's run list."""
    from api.serializers import run_label
    from core.tables import Experiment

    def run_of(i: str, seed: int, cell: str) -> Experiment:
        return Experiment(
            id=f"{i}" * 8 + "-0000-0000-0000-000000000000",
            name="clip vs length",
            sweep_id="s",
            sweep_params={"model.cell": cell},
            spec={"seed": seed},
        )

    runs = [run_of("a", 0, "rnn"), run_of("b", 1, "rnn"), run_of("c", 0, "lstm")]
    labels = [run_label(r) for r in runs]
    assert labels[0] == "clip vs length [cell=rnn, seed=0]"
    assert len(set(labels)) == 3 and len({run_name(r) for r in runs}) == 3
    assert run_name(runs[2]) == "clip_vs_length_cell=lstm_seed=0_cccccccc"
    alone = Experiment(id="d" * 8 + "-0000-0000-0000-000000000000", name="solo")
    assert run_label(alone) == "solo"


LSTM_SMALL = {**SMALL, "model": {"cell": "lstm", "hidden_size": 8, "num_layers": 2}}


def test_the_dynamics_scalars_are_exported(client, sessions, tmp_path: Path) -> None:
    """credit/ratio and the forget-gate statistics are scalar series: in the CSV and in
    TensorBoard with the values /dynamics serves (the vector series are served there only)."""
    exp_id = run(sessions, LSTM_SMALL)
    dynamics = client.get(f"/v1/experiments/{exp_id}/dynamics").json()
    table = rows(client.get(f"/v1/experiments/{exp_id}/export.csv"))
    tb = scalars(
        tensorboard_run(client.get(f"/v1/experiments/{exp_id}/export/tensorboard"), tmp_path)
    )
    wanted = {"credit/ratio": dynamics["credit"]["ratio"]}
    for layer in ("0", "1"):
        for q in ("forget_mean", "forget_near_1", "forget_near_0"):
            wanted[f"gates/{layer}/{q}"] = dynamics["gates"][layer][q]
    for name, served in wanted.items():
        mine = [r for r in table if r["name"] == name]
        assert [int(r["step"]) for r in mine] == served["steps"] and served["steps"]
        assert [float(r["value"]) for r in mine] == pytest.approx(served["values"], rel=1e-15)
        assert [e.step for e in tb[name]] == served["steps"]
        assert [e.value for e in tb[name]] == pytest.approx(served["values"], rel=1e-6)
    vectors = ("credit", "lyapunov/", "conditioning/", "cell_temporal/", "reach/")
    assert not any(r["name"] == "credit" or r["name"].startswith(vectors[1:]) for r in table)


# -- the vector series --

DYNAMIC = {**LSTM_SMALL, "instrument": {**SMALL["instrument"], "dynamics_every": 2}}


def stored_vectors(sessions, exp_id: str) -> dict[str, tuple[list[int], list[list[float]]]]:
    """Every vector series as stored (float64), read back through core.traces."""
    from core.tables import Experiment
    from core.traces import read_series

    with sessions() as s:
        found = read_series(s, s.get(Experiment, exp_id), prefix="")
    return {name: sv for name, sv in found.items() if sv[1] and isinstance(sv[1][0], list)}


def test_export_vectors_csv_holds_every_vector_series_exactly(client, sessions) -> None:
    """Long format, `step,name,index,value`: each stored float64 comes back as the same float
    (repr round-trips), and pivoted by step and index it is the steps x T matrix of
    /gradients."""
    exp_id = run(sessions, DYNAMIC)
    stored = stored_vectors(sessions, exp_id)
    wanted = {"temporal/0", "temporal/1", "cell_temporal/0", "credit", "lyapunov/1"}
    assert wanted | {"conditioning/0/sigma_max"} <= stored.keys()
    resp = client.get(f"/v1/experiments/{exp_id}/export/vectors.csv")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    assert f'filename="{exp_id}.vectors.csv"' in resp.headers["content-disposition"]
    assert resp.text.startswith("step,name,index,value\n")
    got: dict[str, dict[int, list[float]]] = {}
    for r in csv.DictReader(io.StringIO(resp.text)):
        row = got.setdefault(r["name"], {}).setdefault(int(r["step"]), [])
        assert int(r["index"]) == len(row)  # indices 0.. in order
        row.append(float(r["value"]))
    assert got.keys() == stored.keys()  # vectors only: no scalar series here
    for name, (steps, values) in stored.items():
        assert list(got[name]) == steps
        assert list(got[name].values()) == values, name  # exactly, not approximately

    # the pivot a pandas user makes: layer 1's steps x T profile matrix, as /gradients has it
    temporal = client.get(f"/v1/experiments/{exp_id}/gradients").json()["temporal"]["layers"][1]
    profile = got["temporal/1"]
    assert list(profile) == temporal["steps"]
    assert {len(row) for row in profile.values()} == {SMALL["task"]["seq_len"]}
    assert list(profile.values()) == temporal["values"]

    only = client.get(f"/v1/experiments/{exp_id}/export/vectors.csv", params={"prefix": "credit"})
    assert {r["name"] for r in csv.DictReader(io.StringIO(only.text))} == {"credit"}
    queued = add_experiment(sessions, SMALL)
    assert client.get(f"/v1/experiments/{queued}/export/vectors.csv").text == (
        "step,name,index,value\n"
    )
    assert_problem(client.get("/v1/experiments/missing/export/vectors.csv"), 404)


def tensorboard_histograms(run_dir: Path) -> dict[str, list[tuple[int, float, list]]]:
    """Every histogram of a TensorBoard run as TensorBoard's histograms plugin serves it to its
    dashboard: {tag: [(step, wall_time, [[left, right, count], ...]), ...]}."""
    import json

    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider
    from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.histogram import histograms_plugin

    mux = pem.EventMultiplexer(tensor_size_guidance={"histograms": 0})  # keep every step
    mux.AddRunsFromDirectory(str(run_dir.parent))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(run_dir.parent))
    plugin = histograms_plugin.HistogramsPlugin(
        base_plugin.TBContext(data_provider=provider, sampling_hints={"histograms": 0})
    )
    ctx = context.RequestContext()
    tags = plugin.index_impl(ctx, experiment="")[run_dir.name]
    out = {}
    for tag in tags:
        body, _ = plugin.histograms_impl(ctx, tag, run_dir.name, "", downsample_to=10**6)
        out[tag] = [(step, wall, buckets) for wall, step, buckets in json.loads(json.dumps(body))]
    return out


def test_export_tensorboard_holds_every_vector_as_a_histogram(
    client, sessions, tmp_path: Path
) -> None:
    """Each vector series is a histogram tag a step: bucket [i, i + 1) holds the i-th value,
    the stored float64 exactly, read back through TensorBoard's own histograms plugin."""
    exp_id = run(sessions, DYNAMIC)
    stored = stored_vectors(sessions, exp_id)
    run_dir = tensorboard_run(client.get(f"/v1/experiments/{exp_id}/export/tensorboard"), tmp_path)
    hist = tensorboard_histograms(run_dir)
    assert hist.keys() == stored.keys()
    for name, (steps, values) in stored.items():
        assert [step for step, _, _ in hist[name]] == steps
        for (_, _, buckets), vector in zip(hist[name], values, strict=True):
            assert [b[2] for b in buckets] == vector, name  # exactly
            assert [(b[0], b[1]) for b in buckets] == [(i, i + 1) for i in range(len(vector))]
    # the scalars are still there beside them, and the wall times agree with theirs
    tb = scalars(run_dir)
    assert "loss/train" in tb and not hist.keys() & tb.keys()
    walls = {e.step: e.wall_time for e in tb["grad_norm_global/before_clip"]}
    assert [w for step, w, _ in hist["temporal/0"]] == pytest.approx(
        [walls[step] for step, _, _ in hist["temporal/0"]]
    )
    only = client.get(
        f"/v1/experiments/{exp_id}/export/tensorboard", params={"prefix": "temporal/"}
    )
    picked = tensorboard_run(only, tmp_path / "only")
    assert tensorboard_histograms(picked).keys() == {"temporal/0", "temporal/1"}
    assert scalars(picked) == {}


def test_the_vectors_csv_is_streamed_in_bounded_memory(client, sessions) -> None:
    """A profile series of 1 MB stored (4.5 MB of CSV) goes out in pieces: the export holds a
    few chunks and one piece at a time, never the series or the file (peak 0.7 MB here)."""
    import tracemalloc

    import numpy as np

    from api.routes.export import CSV_BLOCK_BYTES, vector_csv_rows
    from core.tables import Experiment
    from core.traces import chunk_row

    exp_id = add_experiment(sessions, SMALL)
    rng = np.random.default_rng(0)
    chunks, per_chunk, width = 16, 25, 300
    with sessions() as s:
        row = s.get(Experiment, exp_id)
        row.status, row.attempt = "succeeded", 1
        for c in range(chunks):
            steps = list(range(c * per_chunk, (c + 1) * per_chunk))
            s.add(chunk_row(exp_id, 1, "temporal/0", steps, rng.random((per_chunk, width))))
        s.commit()
    tracemalloc.start()
    try:
        total, pieces, biggest = 0, 0, 0
        for piece in vector_csv_rows(exp_id, 1, None):
            total, pieces, biggest = total + len(piece), pieces + 1, max(biggest, len(piece))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total > 4_000_000 and pieces > 50 and biggest < 2 * CSV_BLOCK_BYTES
    assert peak < 1_500_000, peak  # the stored series is 1 MB, its CSV 4.5 MB
    body = client.get(f"/v1/experiments/{exp_id}/export/vectors.csv").text
    assert len(body) == total and body.count("\n") == 1 + chunks * per_chunk * width
