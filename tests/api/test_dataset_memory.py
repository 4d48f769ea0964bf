"""What an upload holds in Python memory while it is read and stored (tracemalloc, which
sees every bytes object and array): the pieces, never a chunk or the body. The process's
whole memory (the server's reads, the allocator, libpq) is measured by
bench/dataset_upload.py."""

import asyncio
import hashlib
import io
import tracemalloc

import numpy as np
from starlette.datastructures import Headers

from api.upload import read_form
from core import datasets
from tests.factories import npz_bytes

MESSAGE = 256 * 1024  # what uvicorn hands the app at most per receive


def traced_peak(run) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = run()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_form_reader_writes_the_file_part_without_copying_it():
    content = np.random.default_rng(0).bytes(16 * 2**20)
    boundary = "gradlabtest"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nbig\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.npz"\r\n\r\n'
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    messages = [
        {"type": "http.request", "body": body[i : i + MESSAGE], "more_body": True}
        for i in range(0, len(body), MESSAGE)
    ]
    messages[-1]["more_body"] = False
    del body
    headers = Headers({"content-type": f"multipart/form-data; boundary={boundary}"})

    async def receive():
        return messages.pop(0)

    form, peak = traced_peak(lambda: asyncio.run(read_form(headers, receive)))
    assert form["name"] == "big"
    upload = form["file"]
    assert upload.filename == "d.npz" and upload.size == len(content)
    assert hashlib.sha256(upload.file.read()).digest() == hashlib.sha256(content).digest()
    upload.file.close()
    # a slice of each message (Starlette's parser) would be 256 KiB
    assert peak < 64 * 1024, peak


def test_validation_and_storage_hold_pieces_not_chunks(sessions):
    x = np.random.default_rng(0).standard_normal((128, 256, 32), dtype=np.float32)  # 4 MiB
    content = npz_bytes(x=x, y=np.arange(128) % 2)
    del x
    found, peak = traced_peak(lambda: datasets.inspect_npz(io.BytesIO(content), None, len(content)))
    assert peak < 3 * datasets.READ_BYTES, peak
    with sessions() as s:
        # first: the mappers configured and the statements compiled, once per process
        small = npz_bytes(x=np.zeros((2, 1, 1), np.float32), y=np.arange(2))
        datasets.store(
            s,
            "o",
            "n",
            io.BytesIO(small),
            datasets.inspect_npz(io.BytesIO(small), None, 10**6),
            2**20,
        )
        row, peak = traced_peak(
            lambda: datasets.store(s, "o", "n", io.BytesIO(content), found, 2**20)
        )
        # one 1 MiB chunk read or bound as a parameter would be over this
        assert peak < 4 * datasets.WRITE_PIECE, peak
        assert b"".join(datasets.iter_chunks(s, row.sha256)) == content
