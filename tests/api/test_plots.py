"""Plots (PNG, SVG) and report pages after real runs; the figures hold the stored numbers."""

import base64
import io
import math
import re
import xml.etree.ElementTree as ET

import pytest
from PIL import Image

from tests.checks import assert_problem
from tests.factories import SMALL, add_experiment
from tests.factories import run_finished as run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png(content: bytes) -> Image.Image:
    assert content.startswith(PNG_MAGIC)
    img = Image.open(io.BytesIO(content))
    img.load()
    assert img.width >= 400 and img.height >= 200
    # something is drawn: a blank canvas has one colour, a plot has hundreds
    assert len(img.convert("RGB").getcolors(1 << 20)) > 50
    return img


@pytest.fixture
def finished(sessions) -> str:
    return run(sessions)


def figure_of(sessions, exp_id: str, name: str):
    from api.figures import experiment_figure
    from core.tables import Experiment

    with sessions() as s:
        return experiment_figure(s, s.get(Experiment, exp_id), name)


NAMES = ("temporal", "loss", "gradients", "spectrum", "lyapunov", "credit")


def test_every_plot_as_png_and_svg(client, finished: str) -> None:
    for name in NAMES:
        resp = client.get(f"/v1/experiments/{finished}/plots/{name}.png")
        assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
        png(resp.content)
        resp = client.get(f"/v1/experiments/{finished}/plots/{name}.svg")
        assert resp.status_code == 200 and resp.headers["content-type"] == "image/svg+xml"
        root = ET.fromstring(resp.content)
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        assert len(list(root.iter())) > 50


def test_temporal_heatmap_is_log10_of_the_stored_profiles(client, sessions, finished) -> None:
    layers = client.get(f"/v1/experiments/{finished}/gradients").json()["temporal"]["layers"]
    values = layers[0]["values"]
    assert len(values) == 7 and len(values[0]) == SMALL["task"]["seq_len"]
    fig = figure_of(sessions, finished, "temporal")
    heat = fig.axes[0].images[0].get_array()
    assert heat.shape == (7, 10)
    for i, row in enumerate(values):
        for t, v in enumerate(row):
            assert float(heat[i, t]) == pytest.approx(math.log10(v))
    # the profile panel plots the first, middle and last instrumented steps
    assert [line.get_label() for line in fig.axes[1].lines] == ["step 0", "step 15", "step 29"]


def test_loss_has_the_baseline_and_spectrum_the_bound(client, sessions, finished) -> None:
    exp = client.get(f"/v1/experiments/{finished}").json()
    baseline = exp["summary"]["baseline_loss"]
    ax = figure_of(sessions, finished, "loss").axes[0]
    labels = {line.get_label(): line for line in ax.lines}
    assert list(labels["training loss"].get_ydata()) == pytest.approx(
        client.get(f"/v1/experiments/{finished}/metrics").json()["loss"]
    )
    assert list(labels[f"baseline {baseline:.4g}"].get_ydata()) == pytest.approx([baseline] * 2)
    ax = figure_of(sessions, finished, "spectrum").axes[0]
    bound = [line for line in ax.lines if line.get_label().startswith("1/gamma")]
    assert list(bound[0].get_ydata()) == [1.0, 1.0]  # tanh: gamma = 1
    sigma = exp["summary"]["spectrum"]["0"]["hh"]["sigma_max"]
    hh = next(line for line in ax.lines if line.get_label() == "hh: sigma_max")
    assert hh.get_ydata()[-1] == pytest.approx(sigma)


def test_unknown_plot_or_format_or_owner_is_404(client, api_key, finished: str) -> None:
    assert_problem(client.get(f"/v1/experiments/{finished}/plots/nope.png"), 404)
    assert_problem(client.get(f"/v1/experiments/{finished}/plots/loss.gif"), 404)
    assert_problem(client.get("/v1/experiments/missing/plots/loss.png"), 404)
    other = {"Authorization": f"Bearer {api_key('intruder')}"}
    assert_problem(client.get(f"/v1/experiments/{finished}/plots/loss.png", headers=other), 404)
    assert_problem(client.get(f"/v1/experiments/{finished}/report", headers=other), 404)
    assert_problem(client.get(f"/v1/plots/overlay.png?ids={finished}", headers=other), 404)


def test_no_data_yet_is_an_empty_valid_image(client, sessions) -> None:
    exp_id = add_experiment(sessions, SMALL)  # queued, never run
    for name in NAMES:
        resp = client.get(f"/v1/experiments/{exp_id}/plots/{name}.png")
        assert resp.status_code == 200
        assert resp.content.startswith(PNG_MAGIC)
        texts = [t.get_text() for t in figure_of(sessions, exp_id, name).axes[0].texts]
        assert any("yet" in t for t in texts)


def test_overlay_of_experiments_and_of_a_sweep(client, sessions) -> None:
    from api.figures import overlay
    from core.tables import Experiment
    from worker.runner import run_experiment

    a = run(sessions)
    b = run(sessions, {**SMALL, "train": {**SMALL["train"], "steps": 20}})
    resp = client.get("/v1/plots/overlay.png", params={"ids": f"{a},{b}", "quantity": "loss"})
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
    png(resp.content)
    with sessions() as s:
        rows = [s.get(Experiment, a), s.get(Experiment, b)]
        lines = overlay(s, rows, "loss", "t", by_point=False).axes[0].lines
    assert [len(line.get_xdata()) for line in lines] == [30, 20]
    assert client.get(f"/v1/plots/overlay.svg?ids={a}&quantity=grad_norm").status_code == 200
    assert_problem(client.get("/v1/plots/overlay.png"), 422)
    assert_problem(client.get(f"/v1/plots/overlay.png?ids={a}&quantity=nope"), 422)
    assert_problem(client.get(f"/v1/plots/overlay.png?ids={a},missing"), 404)

    sweep = client.post(
        "/v1/sweeps", json={"base": SMALL, "grid": {"task.seq_len": [5, 10]}, "seeds": [0, 1]}
    ).json()
    for exp_id in (e for p in sweep["points"] for e in p["experiments"]):
        assert run_experiment(exp_id) == "succeeded"
    resp = client.get(f"/v1/plots/overlay.png?sweep={sweep['id']}&quantity=val_loss")
    assert resp.status_code == 200
    png(resp.content)
    with sessions() as s:
        rows = list(s.query(Experiment).where(Experiment.sweep_id == sweep["id"]))
        ax = overlay(s, rows, "val_loss", "t", by_point=True).axes[0]
    # four runs, two grid points: a colour and one legend entry a point
    assert len(ax.lines) == 4
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == [
        "seq_len=10",
        "seq_len=5",
    ]
    assert_problem(client.get("/v1/plots/overlay.png?sweep=missing"), 404)


def report_images(html: str) -> list[Image.Image]:
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    return [png(base64.b64decode(u)) for u in uris]


def bare(client):
    """A client of the same app that sends no Authorization header (`anonymous` and `client`
    are one object)."""
    from fastapi.testclient import TestClient

    return TestClient(client.app, raise_server_exceptions=False)


def test_experiment_report_page(client, finished: str) -> None:
    resp = client.get(f"/v1/experiments/{finished}/report")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in resp.headers["content-security-policy"]
    assert resp.headers["referrer-policy"] == "no-referrer"
    html = resp.text
    assert len(report_images(html)) == len(NAMES)
    exp = client.get(f"/v1/experiments/{finished}").json()
    assert f">{exp['diagnosis']['verdict']}</span>" in html
    assert "ratio_first_last" in html and "baseline_loss" in html
    # the key numbers lead their tables; nested evidence is dotted rows, not raw JSON
    assert html.index("<th>ratio_first_last</th>") < html.index("<th>seq_len</th>")
    assert html.index("<th>final_val_loss</th>") < html.index("<th>device</th>")
    assert "<th>spectrum.sigma_max</th>" in html
    # the page's own script is the only one, and the CSP pins it by hash
    from api.render.report import SCRIPT_HASH

    assert html.count("<script>") == 1 and SCRIPT_HASH in resp.headers["content-security-policy"]
    # a key in the URL is refused, a valid one too, with or without the header beside it
    key = client.headers["Authorization"].removeprefix("Bearer ")
    anonymous = bare(client)
    refused = assert_problem(anonymous.get(f"/v1/experiments/{finished}/report?key={key}"), 401)
    assert refused["type"].endswith("key-in-url") and "/ui/signin" in refused["detail"]
    assert_problem(client.get(f"/v1/experiments/{finished}/report?key={key}"), 401)
    assert_problem(anonymous.get(f"/v1/experiments/{finished}/report"), 401)
    # and so is a key in any other URL, before anything else is checked
    for path in (f"/v1/experiments/{finished}", f"/v1/experiments/{finished}/plots/loss.png"):
        refused = assert_problem(anonymous.get(f"{path}?key={key}"), 401)
        assert refused["type"].endswith("key-in-url")


def test_report_escapes_what_the_user_wrote(client, sessions) -> None:
    exp_id = run(sessions, {**SMALL, "name": "<script>alert(1)</script>"})
    html = client.get(f"/v1/experiments/{exp_id}/report").text
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html


def test_sweep_report_page(client) -> None:
    from worker.runner import run_experiment

    sweep = client.post(
        "/v1/sweeps", json={"base": SMALL, "grid": {"model.cell": ["rnn", "gru"]}}
    ).json()
    ids = [e for p in sweep["points"] for e in p["experiments"]]
    for exp_id in ids:
        assert run_experiment(exp_id) == "succeeded"
    html = client.get(f"/v1/sweeps/{sweep['id']}/report").text
    assert len(report_images(html)) == 3
    for exp_id in ids:
        assert f'href="/v1/experiments/{exp_id}/report"' in html
    assert "model.cell -&gt;" in html  # the factor's effect line
    # the key numbers first; counts out of the finished runs, never a bare fraction; a column
    # a factor with its plain value, not the params as JSON
    assert html.index("id=key-numbers") < html.index("id=points") < html.index("<img")
    assert "<b>2 of 2</b> runs finished" in html and "<th>model.cell</th>" in html
    points = html[html.index("id=points") : html.index("</table>", html.index("id=points"))]
    assert "<td>gru</td>" in points and "{" not in points
    assert re.search(r"<td>[01] of 1</td><td>0 of 1</td>", points), points
    key = client.headers["Authorization"].removeprefix("Bearer ")
    assert_problem(bare(client).get(f"/v1/sweeps/{sweep['id']}/report?key={key}"), 401)
    assert_problem(client.get("/v1/sweeps/missing/report"), 404)


def test_a_title_says_the_status_once_when_the_verdict_is_the_same() -> None:
    from types import SimpleNamespace

    from api.figures import _title

    row = SimpleNamespace(name="x", spec={}, id="0" * 36, status="diverged")
    row.diagnosis = {"verdict": "diverged"}
    assert _title(row, "loss") == "x (diverged): loss"
    row.status, row.diagnosis = "succeeded", {"verdict": "vanishing"}
    assert _title(row, "loss") == "x (succeeded, vanishing): loss"
    row.diagnosis = None
    assert _title(row, "loss") == "x (succeeded): loss"


DYNAMIC = {**SMALL, "model": {"cell": "lstm", "hidden_size": 8, "num_layers": 2}}
DYNAMIC["instrument"] = {**SMALL["instrument"], "dynamics_every": 2}


def test_lyapunov_and_credit_plots_hold_the_stored_numbers(client, sessions) -> None:
    exp_id = run(sessions, DYNAMIC)
    body = client.get(f"/v1/experiments/{exp_id}/dynamics").json()
    fig = figure_of(sessions, exp_id, "lyapunov")
    assert len(fig.axes) >= 4  # two panels a layer
    cond, lyap = fig.axes[0], fig.axes[1]
    last = body["conditioning"]["0"]["sigma_max"]
    step = last["steps"][-1]
    line = next(x for x in cond.lines if x.get_label() == f"sigma_max, step {step}")
    assert list(line.get_xdata()) == body["conditioning"]["0"]["lags"]
    assert list(line.get_ydata()) == pytest.approx(last["values"][-1])
    exps = body["lyapunov"]["0"]
    lam1 = next(x for x in lyap.lines if x.get_label() == "lambda_1")
    assert list(lam1.get_xdata()) == exps["steps"]
    assert list(lam1.get_ydata()) == pytest.approx([r[0] for r in exps["values"]])

    fig = figure_of(sessions, exp_id, "credit")
    ratio = next(x for x in fig.axes[0].lines if x.get_label() == "credit ratio")
    assert list(ratio.get_ydata()) == pytest.approx(body["credit"]["ratio"]["values"])
    vec = body["credit"]["vector"]
    first = next(x for x in fig.axes[1].lines if x.get_label() == f"step {vec['steps'][0]}")
    assert list(first.get_ydata()) == pytest.approx(vec["values"][0])
    assert len(first.get_xdata()) == 2  # adding: the two marked values
    page = client.get(f"/v1/experiments/{exp_id}/report").text
    assert 'id="plot-lyapunov"' in page and 'id="plot-credit"' in page


def test_every_spectrum_panel_says_what_its_y_axis_is(sessions) -> None:
    exp_id = run(sessions, {**SMALL, "model": {"cell": "gru", "hidden_size": 8, "num_layers": 2}})
    fig = figure_of(sessions, exp_id, "spectrum")
    assert len(fig.axes) == 2  # a panel a layer
    for ax in fig.axes:
        assert ax.get_ylabel() == "singular value / spectral radius"
        assert ax.get_xlabel() == "training step"
        assert {line.get_label() for line in ax.lines} >= {"r: sigma_max", "n: spectral radius"}


def test_an_lstm_stored_before_the_cell_names_still_renders(client, sessions) -> None:
    """LSTM and GRU runs stored before parameters were named after the cell have `grad/rnn.*`
    series: names are read back as stored (never by pattern), so they still plot and serve."""
    import numpy as np

    from core.tables import Experiment
    from core.traces import chunk_row

    lstm = {**SMALL, "model": {"cell": "lstm", "hidden_size": 8}}
    exp_id = add_experiment(sessions, lstm)
    steps = [0, 5, 10]
    old = {"rnn.0.weight_hh_l0": [0.5, 0.25, 0.125], "head.weight": [1.0, 2.0, 3.0]}
    with sessions() as s:
        row = s.get(Experiment, exp_id)
        row.status, row.attempt, row.progress_step = "succeeded", 1, 11
        s.add(chunk_row(exp_id, 1, "grad_norm_total", steps, np.array([[1.0], [2.0], [3.0]])))
        for name, values in old.items():
            s.add(chunk_row(exp_id, 1, f"grad/{name}", steps, np.array(values)[:, None]))
        s.commit()
    assert client.get(f"/v1/experiments/{exp_id}/gradients").json()["parameters"] == old
    left = figure_of(sessions, exp_id, "gradients").axes[0]
    lines = {line.get_label(): list(line.get_ydata()) for line in left.lines}
    assert lines["rnn.0.weight_hh_l0"] == old["rnn.0.weight_hh_l0"]
    png(client.get(f"/v1/experiments/{exp_id}/plots/gradients.png").content)
    assert client.get(f"/v1/experiments/{exp_id}/report").status_code == 200
