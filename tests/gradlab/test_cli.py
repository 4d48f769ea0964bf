"""The client and the `gradlab` CLI against the app with real runs: in process on both
backends (the CLI sends through the test's httpx client), and as a real process over loopback
HTTP to uvicorn."""

import io
import json
import subprocess
import sys
import tarfile
from importlib.metadata import entry_points
from pathlib import Path

import httpx
import pytest

from gradlab.cli import main
from gradlab.client import ApiError, Client, UnsafeArchive, extract_archive
from tests.factories import SMALL
from tests.serving import ROOT, uvicorn, worker_thread


def cli(client, capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["-q", *argv], http=client)
    out, err = capsys.readouterr()
    return code, out, err


def test_submit_wait_show_traces_report_plot(client, sessions, capsys, tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SMALL))
    with worker_thread(sessions) as ran:
        code, out, err = cli(client, capsys, "submit", str(spec), "--wait", "--poll", "0.1")
    assert code == 0, err
    exp = json.loads(out)
    assert code == 0 and exp["status"] == "succeeded" and ran == [exp["id"]]
    assert exp["progress"] == {"step": 30, "total_steps": 30} and exp["diagnosis"]["verdict"]

    code, out, _ = cli(client, capsys, "show", exp["id"], "--json")
    assert code == 0 and json.loads(out)["summary"] == exp["summary"]
    code, out, _ = cli(client, capsys, "show", exp["id"])  # the summary a person reads
    lines = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert lines["status"] == "succeeded" and lines["verdict"] == exp["diagnosis"]["verdict"]
    assert (
        lines["progress"] == "30/30" and lines["outcome"] == exp["diagnosis"]["outcome"]["result"]
    )
    code, out, _ = cli(client, capsys, "list")
    assert code == 0 and out.split()[:2] == [exp["id"], "succeeded"]
    code, out, _ = cli(client, capsys, "list", "--status", "queued", "--json")
    assert code == 0 and json.loads(out) == []

    traces = tmp_path / "traces.json"
    code, _, err = cli(client, capsys, "traces", exp["id"], "--out", str(traces))
    doc = json.loads(traces.read_text())
    assert code == 0 and f"wrote {traces}" in err
    assert doc["metrics"]["steps"] == list(range(30))
    assert doc["gradients"]["temporal"]["layers"][0]["steps"] == [0, 5, 10, 15, 20, 25, 29]
    assert doc["instruments"]["spectrum"]["0"]["hh"]["sigma_max"]["values"]
    assert doc["experiment"]["id"] == exp["id"] and doc["events"] == []

    report = tmp_path / "report.html"
    assert cli(client, capsys, "report", exp["id"], "--out", str(report))[0] == 0
    assert report.read_text().count('src="data:image/png;base64,') == 6
    plot = tmp_path / "t.svg"
    assert cli(client, capsys, "plot", exp["id"], "temporal", "--out", str(plot))[0] == 0
    assert plot.read_text().lstrip().startswith("<?xml") and "<svg" in plot.read_text()


def test_errors_are_exit_1_with_the_problem(client, capsys, tmp_path: Path) -> None:
    code, _, err = cli(client, capsys, "show", "missing")
    assert code == 1 and "404 Not found" in err and "missing" in err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": {"steps": 0}, "model": {"cell": "tree"}}))
    code, out, err = cli(client, capsys, "submit", str(bad))
    assert code == 1 and out == ""
    assert "422" in err and "train.steps" in err and "model" in err
    code, _, err = cli(client, capsys, "submit", str(tmp_path / "nowhere.json"))
    assert code == 1 and "nowhere.json" in err


def test_a_diverged_run_is_exit_3(client, sessions, capsys, tmp_path: Path) -> None:
    from tests.factories import EXPLODING

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**SMALL, **EXPLODING}))
    with worker_thread(sessions):
        code, out, _ = cli(client, capsys, "submit", str(spec), "--wait", "--poll", "0.1")
    assert code == 3 and json.loads(out)["status"] == "diverged"


def test_sweep_wait(client, sessions, capsys, tmp_path: Path) -> None:
    req = tmp_path / "sweep.json"
    req.write_text(json.dumps({"base": SMALL, "grid": {"task.seq_len": [5, 10]}}))
    with worker_thread(sessions) as ran:
        code, out, _ = cli(client, capsys, "sweep", str(req), "--wait", "--poll", "0.2")
    sweep = json.loads(out)
    assert code == 0 and sweep["status"] == "finished" and sweep["counts"] == {"succeeded": 2}
    assert sorted(ran) == sorted(e for p in sweep["points"] for e in p["experiments"])
    report = tmp_path / "sweep.html"
    assert cli(client, capsys, "report", sweep["id"], "--sweep", "--out", str(report))[0] == 0
    assert "seq_len" in report.read_text()


def test_key_from_environment_or_data_file(client, monkeypatch, tmp_path: Path) -> None:
    key = client.headers.pop("Authorization").removeprefix("Bearer ")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GRADLAB_KEY", raising=False)
    with pytest.raises(ApiError) as info:
        Client(http=client).experiment("x")
    assert info.value.status == 401
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "api_key").write_text(key + "\n")
    with pytest.raises(ApiError) as info:  # the key from data/api_key: now the id is unknown
        Client(http=client).experiment("x")
    assert info.value.status == 404
    client.headers.pop("Authorization")
    monkeypatch.setenv("GRADLAB_KEY", "glk_wrong")  # the environment wins over the file
    with pytest.raises(ApiError) as info:
        Client(http=client).experiment("x")
    assert info.value.status == 401


def test_console_script_is_packaged() -> None:
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("gradlab") == "gradlab.cli:main"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_cli_process_over_loopback(backend, sessions, api_key, tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SMALL))
    with uvicorn(backend.env(), tmp_path / "uvicorn.log") as base, worker_thread(sessions):
        env = {"GRADLAB_URL": base, "GRADLAB_KEY": api_key("tester"), "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-m", "gradlab", "submit", str(spec), "--wait", "--poll", "0.2"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**__import__("os").environ, **env},
            cwd=tmp_path,
        )
    assert done.returncode == 0, done.stderr
    exp = json.loads(done.stdout)
    assert exp["status"] == "succeeded"
    assert f"{exp['id'][:8]} succeeded step 30/30" in done.stderr  # the progress lines


def test_export_tensorboard_and_csv(client, sessions, capsys, tmp_path: Path) -> None:
    from tests.checks import tensorboard_scalars as scalars
    from tests.factories import run_finished as run

    exp_id = run(sessions)
    logs = tmp_path / "logs"
    code, _, err = cli(client, capsys, "export", exp_id, "--tensorboard", str(logs))
    assert code == 0, err
    (events,) = (logs / exp_id).iterdir()
    assert f"wrote {events}" in err and f"tensorboard --logdir {logs}" in err
    tb = scalars(logs / exp_id)
    metrics = client.get(f"/v1/experiments/{exp_id}/metrics").json()
    assert [e.step for e in tb["loss/train"]] == metrics["steps"]
    assert [e.value for e in tb["loss/train"]] == pytest.approx(metrics["loss"], rel=1e-6)
    first = events.read_bytes()
    # again into the same logdir: the same run, the same bytes, not a second run beside it
    assert cli(client, capsys, "export", exp_id, "--tensorboard", str(logs))[0] == 0
    assert [p.read_bytes() for p in (logs / exp_id).iterdir()] == [first]
    assert [p.name for p in logs.iterdir()] == [exp_id]

    out = tmp_path / "grads.csv"
    code, _, err = cli(client, capsys, "export", exp_id, "--csv", str(out), "--prefix", "grad/")
    lines = out.read_text().splitlines()
    assert code == 0 and lines[0] == "step,name,value" and len(lines) > 1
    assert all(line.split(",")[1].startswith("grad/") for line in lines[1:])

    vectors = tmp_path / "vectors.csv"
    code, _, err = cli(client, capsys, "export", exp_id, "--vectors-csv", str(vectors))
    lines = vectors.read_text().splitlines()
    assert code == 0 and lines[0] == "step,name,index,value"
    profile = [line.split(",") for line in lines[1:] if line.split(",")[1] == "temporal/0"]
    temporal = client.get(f"/v1/experiments/{exp_id}/gradients").json()["temporal"]["layers"][0]
    assert [float(v) for _, _, _, v in profile[:10]] == temporal["values"][0]  # step 0, t 0..9
    assert [int(t) for _, _, t, _ in profile[:10]] == list(range(10))
    profiles = Client(http=client).export_vectors_csv(exp_id, prefix="temporal/")
    assert profiles.splitlines()[1:] == [",".join(p) for p in profile]

    code, _, err = cli(client, capsys, "export", "missing", "--tensorboard", str(logs))
    assert code == 1 and "404" in err
    with pytest.raises(SystemExit):  # one of --tensorboard and --csv is required
        main(["export", exp_id], http=client)


def targz(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info, b"payload"


def test_extract_refuses_anything_that_would_leave_the_folder(tmp_path: Path) -> None:
    dest, outside = tmp_path / "logs", tmp_path / "outside"
    outside.mkdir()
    (dest / "run").mkdir(parents=True)
    (dest / "jump").symlink_to(outside)  # already there: following it would leave dest
    for bad in (
        member("../evil"),
        member("run/../../evil"),
        member(str(outside / "abs")),
        member("run/link", tarfile.SYMTYPE, str(outside)),
        member("run/hard", tarfile.LNKTYPE, "../../etc/passwd"),
        member("run/fifo", tarfile.FIFOTYPE),
        member("jump/evil"),
    ):
        # a good member first: nothing at all is written when one is bad
        with pytest.raises(UnsafeArchive):
            extract_archive(targz(member("run/ok"), bad), dest)
        assert sorted(p.name for p in tmp_path.rglob("*")) == ["jump", "logs", "outside", "run"]
    assert extract_archive(targz(member("run/ok")), dest) == [(dest / "run" / "ok").resolve()]
    assert (dest / "run" / "ok").read_bytes() == b"payload"


def test_export_of_an_unsafe_archive_is_exit_1(capsys, tmp_path: Path) -> None:
    # no server sends this: a stand-in HTTP answer carries the hostile archive to the CLI
    evil = targz(member("../evil"))
    transport = httpx.MockTransport(lambda _: httpx.Response(200, content=evil))
    with httpx.Client(transport=transport, base_url="http://gradlab.test") as http:
        code = main(["export", "x", "--tensorboard", str(tmp_path / "logs")], http=http)
    assert code == 1 and "refusing archive member '../evil'" in capsys.readouterr().err
    assert not (tmp_path / "evil").exists() and not (tmp_path / "logs").exists()


def test_the_client_knows_the_services_terminal_statuses() -> None:
    """The client waits for these; it carries its own copy so it needs no server package."""
    from core.status import TERMINAL
    from gradlab.client import TERMINAL as CLIENT_TERMINAL

    assert CLIENT_TERMINAL == TERMINAL


def test_datasets_upload_list_show_delete(client, capsys, tmp_path: Path) -> None:
    import numpy as np

    from tests.factories import lag_arrays

    path = tmp_path / "sensors.npz"
    np.savez(path, **lag_arrays(n=30, t=8, lag=2))
    code, out, err = cli(client, capsys, "datasets", "upload", str(path), "--name", "sensors")
    assert code == 0, err
    d = json.loads(out)
    assert (d["name"], d["kind"], d["n"], d["seq_len"], d["target"]) == (
        "sensors",
        "regression",
        30,
        8,
        "step",
    )
    code, out, _ = cli(client, capsys, "datasets", "list")
    assert code == 0 and [x["id"] for x in json.loads(out)] == [d["id"]]
    code, out, _ = cli(client, capsys, "datasets", "show", d["id"])
    assert json.loads(out) == d
    assert cli(client, capsys, "datasets", "delete", d["id"])[0] == 0
    code, _, err = cli(client, capsys, "datasets", "show", d["id"])
    assert code == 1 and "404" in err
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    code, _, err = cli(client, capsys, "datasets", "upload", str(bad))
    assert code == 1 and "422" in err and "file: not an npz" in err

    with Client(http=client) as gl:  # the Python client's counterparts
        d = gl.upload_dataset(path, kind="regression")
        assert d["name"] == "sensors" and gl.dataset(d["id"])["sha256"] == d["sha256"]
        assert [x["id"] for x in gl.datasets()] == [d["id"]]
        gl.delete_dataset(d["id"])
        assert gl.datasets() == []


def test_cancel_and_the_python_list(client, capsys) -> None:
    ids = [Client(http=client).submit({**SMALL, "name": f"run {i}"})["id"] for i in range(3)]
    code, out, _ = cli(client, capsys, "cancel", ids[0])
    assert code == 0 and out.split()[:2] == [ids[0], "cancelled"]
    with Client(http=client) as gl:
        assert [e["id"] for e in gl.experiments()] == ids[::-1]  # newest first
        assert [e["id"] for e in gl.experiments(status="cancelled")] == [ids[0]]
        assert [e["id"] for e in gl.experiments(status=["queued", "cancelled"], limit=2)] == [
            ids[2],
            ids[1],
        ]
        assert [e["name"] for e in gl.experiments(name="RUN 1")] == ["run 1"]


def test_sweeps_show_and_cancel(client, capsys) -> None:
    sweep = Client(http=client).submit_sweep({"base": SMALL, "grid": {"model.hidden_size": [4, 8]}})
    code, out, _ = cli(client, capsys, "sweeps", "show", sweep["id"])
    assert code == 0 and json.loads(out)["experiments"] == 2
    code, out, _ = cli(client, capsys, "sweeps", "cancel", sweep["id"])
    assert code == 0 and json.loads(out)["counts"] == {"cancelled": 2}


def test_the_url_follows_port_and_the_key_file_is_found_from_a_subfolder(
    monkeypatch, tmp_path: Path
) -> None:
    from gradlab.client import default_key, default_url

    monkeypatch.delenv("GRADLAB_URL", raising=False)
    monkeypatch.delenv("GRADLAB_KEY", raising=False)
    monkeypatch.delenv("GRADLAB_KEY_FILE", raising=False)
    monkeypatch.setenv("PORT", "8131")
    assert default_url() == "http://127.0.0.1:8131"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "api_key").write_text("glk_found\n")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert default_key() == "glk_found"
    monkeypatch.setenv("GRADLAB_KEY_FILE", str(tmp_path / "nowhere"))
    assert default_key() is None


def test_a_401_and_a_refused_connection_say_what_to_do(client, capsys, monkeypatch) -> None:
    from tests.serving import free_port

    client.headers["Authorization"] = "Bearer glk_wrong"
    code, _, err = cli(client, capsys, "list")
    assert code == 1 and "401" in err and "GRADLAB_KEY" in err and "make run" in err
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert main(["--url", url, "--key", "k", "list"]) == 1
    err = capsys.readouterr().err
    assert url in err and "make run" in err
