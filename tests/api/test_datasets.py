"""/v1/datasets on both backends: upload, train on it, diagnose, report, delete; every bad
upload a 4xx with nothing stored; the same bytes stored once; a worker with an empty cache
reads the file from the database."""

import io
import zipfile

import numpy as np
import pytest
from sqlalchemy import func, select

from core.tables import Dataset, DatasetBlob, DatasetChunk
from tests.checks import assert_problem
from tests.factories import digits_arrays, lag_arrays, npz_bytes, upload

SMALL_RUN = {
    "model": {"cell": "gru", "hidden_size": 8},
    "train": {"steps": 20, "batch_size": 16, "device": "cpu"},
    "instrument": {"every": 5, "val_every": 10},
}


@pytest.fixture(autouse=True)
def own_cache(settings, tmp_path, monkeypatch):
    """Each test's worker cache in its own folder, never the working tree's data/."""
    monkeypatch.setattr(settings, "dataset_cache_dir", tmp_path / "cache")


def counts(sessions) -> tuple[int, int, int]:
    with sessions() as s:
        return tuple(
            s.scalar(select(func.count()).select_from(t))
            for t in (Dataset, DatasetBlob, DatasetChunk)
        )


def small_classes(n: int = 40, t: int = 6, f: int = 2, **extra):
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((n, t, f)).astype(np.float32), "y": np.arange(n) % 2, **extra}


def run_on(client, sessions, dataset_id: str, **task) -> dict:
    from worker.runner import run_experiment

    r = client.post(
        "/v1/experiments", json={**SMALL_RUN, "task": {"name": "dataset", "id": dataset_id, **task}}
    )
    assert r.status_code == 202, r.text
    exp_id = r.json()["id"]
    assert run_experiment(exp_id) == "succeeded"
    return client.get(f"/v1/experiments/{exp_id}").json()


def test_upload_train_diagnose_report_delete(client, sessions, settings, tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "dataset_cache_dir", tmp_path / "host-a")
    content = npz_bytes(**digits_arrays())
    r = upload(client, content, "digits")
    assert r.status_code == 201, r.text
    d = r.json()
    assert r.headers["location"] == f"/v1/datasets/{d['id']}"
    assert (d["kind"], d["n"], d["seq_len"], d["features"], d["classes"]) == (
        "classification",
        1797,
        64,
        1,
        10,
    )
    assert d["shapes"] == {"x": [1797, 64, 1], "y": [1797]}
    assert d["dtypes"] == {"x": "float32", "y": "int64"} and d["size"] == len(content)
    import hashlib

    assert d["sha256"] == hashlib.sha256(content).hexdigest()
    assert client.get(f"/v1/datasets/{d['id']}").json() == d
    assert [i["id"] for i in client.get("/v1/datasets").json()["items"]] == [d["id"]]

    # queued on it: the dataset cannot be deleted
    q = client.post(
        "/v1/experiments", json={**SMALL_RUN, "task": {"name": "dataset", "id": d["id"]}}
    )
    assert q.status_code == 202, q.text
    assert_problem(client.delete(f"/v1/datasets/{d['id']}"), 409)
    from worker.runner import run_experiment

    assert run_experiment(q.json()["id"]) == "succeeded"
    exp = client.get(f"/v1/experiments/{q.json()['id']}").json()
    assert exp["summary"]["baseline_loss"] == pytest.approx(np.log(10), abs=0.01)
    assert exp["summary"]["accuracy"] is not None
    assert exp["diagnosis"]["verdict"] in ("healthy", "vanishing", "exploding", "inconclusive")
    assert exp["diagnosis"]["evidence"]["seq_len"] == 64
    grads = client.get(f"/v1/experiments/{exp['id']}/gradients").json()
    assert len(grads["temporal"]["layers"][0]["values"][0]) == 64
    report = client.get(f"/v1/experiments/{exp['id']}/report")
    assert report.status_code == 200 and "text/html" in report.headers["content-type"]
    assert list((tmp_path / "host-a").glob("*.npz")) == [tmp_path / "host-a" / f"{d['sha256']}.npz"]

    assert client.delete(f"/v1/datasets/{d['id']}").status_code == 204
    assert counts(sessions) == (0, 0, 0)
    assert_problem(client.get(f"/v1/datasets/{d['id']}"), 404)


def test_the_same_file_twice_is_stored_once(client, sessions, settings, monkeypatch):
    monkeypatch.setattr(settings, "dataset_chunk_bytes", 4096)
    content = npz_bytes(**small_classes(n=200, t=10))
    a, b = (upload(client, content, name).json() for name in ("a", "b"))
    assert a["id"] != b["id"] and a["sha256"] == b["sha256"]
    assert counts(sessions) == (2, 1, -(-len(content) // 4096))
    assert client.delete(f"/v1/datasets/{a['id']}").status_code == 204
    assert counts(sessions)[:2] == (1, 1)  # b still points at the bytes
    assert client.delete(f"/v1/datasets/{b['id']}").status_code == 204
    assert counts(sessions) == (0, 0, 0)


@pytest.mark.parametrize("chunk", [4096, 100_000, 2 * 64 * 1024])
def test_chunks_read_back_as_the_uploaded_bytes(client, sessions, settings, monkeypatch, chunk):
    """Chunks smaller than the pieces they are written in (64 KiB), larger, and a whole number
    of them, the last one short: the rows hold the file's bytes in order, on both backends
    (SQLite's blob writes, PostgreSQL's COPY)."""
    from core.datasets import iter_chunks

    monkeypatch.setattr(settings, "dataset_chunk_bytes", chunk)
    content = npz_bytes(**small_classes(n=1000, t=30))  # about 250 kB
    d = upload(client, content).json()
    with sessions() as s:
        chunks = list(iter_chunks(s, d["sha256"]))
    assert len(chunks) == -(-len(content) // chunk) and b"".join(chunks) == content


def test_a_worker_with_an_empty_cache_reads_the_file_from_the_database(
    client, sessions, settings, tmp_path, monkeypatch
):
    d = upload(client, npz_bytes(**small_classes())).json()
    for host in ("host-a", "host-b"):  # two hosts: no shared folder
        monkeypatch.setattr(settings, "dataset_cache_dir", tmp_path / host)
        exp = run_on(client, sessions, d["id"])
        assert exp["status"] == "succeeded"
        cached = tmp_path / host / f"{d['sha256']}.npz"
        assert cached.read_bytes() == npz_bytes(**small_classes())


def truncated_zip() -> bytes:
    content = npz_bytes(**small_classes())
    return content[: len(content) // 2]


def zip_with(**members: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


ok = small_classes()
BAD = {
    "not a zip": (b"just some text", "file", "not an npz"),
    "a plain npy": (npy(ok["x"]), "file", "not an npz"),
    "truncated": (truncated_zip(), "file", "npz"),
    "no x": (npz_bytes(y=ok["y"]), "file", "'x'"),
    "no y": (npz_bytes(x=ok["x"]), "file", "'y'"),
    "x rank 2": (npz_bytes(x=ok["x"][:, :, 0], y=ok["y"]), "x", "(N, T, F)"),
    "N mismatch": (npz_bytes(x=ok["x"], y=ok["y"][:-1]), "y", "rows"),
    "NaN in x": (
        npz_bytes(x=np.where(np.eye(6, 2)[None] > 0, np.nan, ok["x"]), y=ok["y"]),
        "x",
        "NaN",
    ),
    "inf in x": (npz_bytes(x=ok["x"] * np.float32(np.inf), y=ok["y"]), "x", "NaN or infinite"),
    "object array": (
        zip_with(**{"x.npy": npy(np.array([{"a": 1}] * 3, dtype=object)), "y.npy": npy(ok["y"])}),
        "file",
        "objects",
    ),
    "string y": (npz_bytes(x=ok["x"], y=np.array(["cat", "dog"] * 20)), "file", "strings"),
    "classes not 0..C-1": (npz_bytes(x=ok["x"], y=(np.arange(40) % 2) * 2), "y", "missing: 1"),
    "negative class": (npz_bytes(x=ok["x"], y=np.arange(40) % 2 - 1), "y", "0..C-1"),
    "zero-length T": (
        npz_bytes(x=np.zeros((4, 0, 1), np.float32), y=np.arange(4) % 2),
        "x",
        "zero-length",
    ),
    "zero lengths": (
        npz_bytes(**small_classes(lengths=np.r_[0, np.full(39, 6)])),
        "lengths",
        "zero-length",
    ),
    "lengths over T": (npz_bytes(**small_classes(lengths=np.full(40, 7))), "lengths", "over T"),
    "NaN regression target": (npz_bytes(x=ok["x"], y=np.full(40, np.nan)), "y", "NaN"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_every_bad_upload_is_a_4xx_naming_it_and_stores_nothing(client, sessions, case):
    content, field, words = BAD[case]
    r = upload(client, content)
    body = assert_problem(r, 422, field)
    assert words in body["detail"], body
    assert counts(sessions) == (0, 0, 0)


def test_too_large_is_413_by_content_length_and_while_reading(
    client, sessions, settings, monkeypatch
):
    content = npz_bytes(**small_classes(n=400, t=50))
    monkeypatch.setattr(settings, "max_dataset_bytes", len(content) // 4)
    assert_problem(upload(client, content), 413)
    # no Content-Length (chunked): stopped by the count as the body arrives
    boundary = "gradlabtest"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.npz"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body():
        yield head
        for i in range(0, len(content), 8192):
            yield content[i : i + 8192]
        yield tail

    r = client.post(
        "/v1/datasets",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_problem(r, 413)
    # and a file just over the limit within the form slack: refused on its own size
    monkeypatch.setattr(settings, "max_dataset_bytes", len(content) - 10)
    assert_problem(upload(client, content), 413)
    assert counts(sessions) == (0, 0, 0)


def test_a_cut_off_multipart_body_stores_nothing(client, sessions):
    content = npz_bytes(**small_classes())
    boundary = "gradlabtest"
    cut = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.npz"\r\n\r\n'
    ).encode() + content[: len(content) // 2]
    r = client.post(
        "/v1/datasets",
        content=cut,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert 400 <= r.status_code < 500
    assert counts(sessions) == (0, 0, 0)


def test_no_file_field_and_no_key_are_refused(client, sessions):
    assert_problem(client.post("/v1/datasets", data={"name": "x"}), 422, "file")
    r = client.post(
        "/v1/datasets",
        files={"file": ("d.npz", npz_bytes(**small_classes()))},
        headers={"Authorization": "Bearer not-a-key"},
    )
    assert r.status_code == 401
    assert counts(sessions) == (0, 0, 0)


def test_kind_is_inferred_and_overridable(client):
    ints = npz_bytes(x=ok["x"], y=np.arange(40) % 4)
    assert upload(client, ints).json()["kind"] == "classification"
    r = upload(client, ints, kind="regression").json()
    assert (r["kind"], r["outputs"], r["classes"]) == ("regression", 1, None)
    floats = npz_bytes(x=ok["x"], y=(np.arange(40) % 3).astype(np.float64))
    assert upload(client, floats).json()["kind"] == "regression"
    assert upload(client, floats, kind="classification").json()["classes"] == 3
    assert_problem(
        upload(client, npz_bytes(x=ok["x"], y=np.linspace(0, 1, 40)), kind="classification"),
        422,
        "y",
    )


def test_specs_on_a_dataset_are_checked_against_it(client, api_key, settings, monkeypatch):
    d = upload(client, npz_bytes(**small_classes())).json()
    post = lambda task, **more: client.post(  # noqa: E731
        "/v1/experiments", json={**SMALL_RUN, **more, "task": {"name": "dataset", **task}}
    )
    assert_problem(post({"id": "nope"}), 422, "task.id")
    assert_problem(post({}), 422, "task.id")
    assert_problem(post({"id": d["id"], "readout": "every"}), 422, "task.readout")
    assert_problem(post({"id": d["id"], "key_steps": [6]}), 422, "task.key_steps")
    assert (
        post({"id": d["id"], "key_steps": [5], "solved": {"val_accuracy": 0.9}}).status_code == 202
    )
    other = {"Authorization": f"Bearer {api_key('someone-else')}"}
    assert_problem(client.get(f"/v1/datasets/{d['id']}", headers=other), 404)
    r = client.post(
        "/v1/experiments",
        headers=other,
        json={**SMALL_RUN, "task": {"name": "dataset", "id": d["id"]}},
    )
    assert_problem(r, 422, "task.id")
    assert_problem(client.delete(f"/v1/datasets/{d['id']}", headers=other), 404)
    # the budget reads T and F from the dataset: 40 x 6 x 2 here
    per_exp = 20 * 16 * 6 * 3 * 8 * (8 + 2)
    monkeypatch.setattr(settings, "max_cost", per_exp - 1)
    body = assert_problem(post({"id": d["id"]}), 422, "train.steps")
    assert body["estimate"] == per_exp


def test_a_sweep_over_datasets(client, sessions):
    ids = [upload(client, npz_bytes(**small_classes(t=t)), f"t{t}").json()["id"] for t in (4, 8)]
    r = client.post(
        "/v1/sweeps",
        json={
            "base": {**SMALL_RUN, "task": {"name": "dataset", "id": ids[0]}},
            "grid": {"task.id": ids},
        },
    )
    assert r.status_code == 202, r.text
    sweep = client.get(f"/v1/sweeps/{r.json()['id']}").json()
    assert [p["params"]["task.id"] for p in sweep["points"]] == ids
    bad = client.post(
        "/v1/sweeps",
        json={
            "base": {**SMALL_RUN, "task": {"name": "dataset", "id": ids[0]}},
            "grid": {"task.id": [ids[0], "missing"]},
        },
    )
    body = assert_problem(bad, 422, "task.id")
    assert body["point"] == {"task.id": "missing"}


def test_variable_lengths_and_every_step_regression_run_end_to_end(client, sessions):
    lag = lag_arrays(n=64, t=12, lag=2)
    lag["lengths"] = np.random.default_rng(0).integers(4, 13, 64)
    d = upload(client, npz_bytes(**lag)).json()
    assert d["lengths"] == {"min": int(lag["lengths"].min()), "max": 12}
    assert d["target"] == "step" and d["outputs"] == 1
    exp = run_on(client, sessions, d["id"], readout="every")
    assert exp["summary"]["final_val_loss"] is not None
    assert exp["summary"]["baseline_accuracy"] is None and exp["summary"]["accuracy"] is None


def multipart(*parts: tuple[str, str | None, bytes], end: bool = True) -> dict:
    """A multipart/form-data request of (field, filename, bytes) parts, cut before the closing
    boundary when not `end`."""
    boundary = "gradlabtest"
    body = b""
    for field, filename, data in parts:
        named = f'; filename="{filename}"' if filename is not None else ""
        body += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"{named}\r\n\r\n'
            ).encode()
            + data
            + b"\r\n"
        )
    body += f"--{boundary}--\r\n".encode() if end else b""
    return {
        "content": body,
        "headers": {"content-type": f"multipart/form-data; boundary={boundary}"},
    }


def test_a_body_cut_off_after_the_whole_file_stores_nothing(client, sessions):
    """The file part complete (a valid npz) but the form never closed: refused, not stored."""
    content = npz_bytes(**small_classes())
    assert upload(client, content).status_code == 201  # the same file, whole, is accepted
    client.delete(f"/v1/datasets/{client.get('/v1/datasets').json()['items'][0]['id']}")
    cut = multipart(("file", "d.npz", content), end=False)
    body = assert_problem(client.post("/v1/datasets", **cut), 400, "file")
    assert "cut-off" in body["detail"]
    assert counts(sessions) == (0, 0, 0)


def test_bad_form_fields_are_refused_naming_them(client, sessions):
    content = npz_bytes(**small_classes())
    cases = {
        "a NUL in the name": (
            multipart(("name", None, b"a\x00b"), ("file", "d.npz", content)),
            422,
            "name",
        ),
        "a NUL in the file name": (multipart(("file", "a\x00.npz", content)), 422, "file"),
        "two files": (
            multipart(("file", "a.npz", content), ("file", "b.npz", content)),
            422,
            "file",
        ),
        "the file in another field": (multipart(("data", "d.npz", content)), 422, "data"),
        "no boundary": (
            {"content": b"x", "headers": {"content-type": "multipart/form-data"}},
            400,
            "file",
        ),
    }
    for case, (request, status, field) in cases.items():
        r = client.post("/v1/datasets", **request)
        assert r.status_code == status, (case, r.text)
        assert_problem(r, status, field)
    assert counts(sessions) == (0, 0, 0)


def test_a_long_file_name_is_cut_to_fit(client):
    """With no name field the file's name is the dataset's, cut to the column's 200."""
    r = client.post("/v1/datasets", **multipart(("file", "n" * 300 + ".npz", npz_bytes(**ok))))
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "n" * 200


def test_a_file_shorter_than_when_it_was_read_stores_nothing(sessions, settings):
    """Storage re-reads the file: one that shrank meanwhile is refused mid-write (the SQLite
    blob and the PostgreSQL COPY both abandoned), and the session is usable after."""
    from core import datasets
    from core.errors import Problem

    content = npz_bytes(**small_classes(n=1000, t=30))
    found = datasets.inspect_npz(io.BytesIO(content), None, len(content))
    with sessions() as s:
        with pytest.raises(Problem, match="shorter"):
            datasets.store(s, "o", "n", io.BytesIO(content[:-5000]), found, 64 * 1024)
        s.rollback()
        row = datasets.store(s, "o", "n", io.BytesIO(content), found, 64 * 1024)
        assert row.sha256 == found.sha256
    assert counts(sessions) == (1, 1, -(-len(content) // (64 * 1024)))
