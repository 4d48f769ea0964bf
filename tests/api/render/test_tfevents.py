"""api.render.tfevents: the CRC32C against published vectors and TensorBoard's own implementation,
the record framing through TensorBoard's record reader (which checks both CRCs), and the
protobuf bytes through the real protobuf classes."""

import io
import math
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.tensorflow_stub import errors
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow as tb_records

from api.render.tfevents import (
    Buckets,
    EventWriter,
    crc32c,
    event,
    masked_crc32c,
    record,
    scalar_summary,
    varint,
    vector_summary,
)


def test_crc32c_known_vectors() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the CRC catalogue's check value
    assert crc32c(b"") == 0
    # RFC 3720 (iSCSI), appendix B.4
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C


def test_crc32c_and_mask_agree_with_tensorboards_own() -> None:
    rng = random.Random(7)
    for n in (1, 7, 8, 63, 64, 1000):
        data = rng.randbytes(n)
        assert crc32c(data) == tb_records.crc32c(data)
        assert masked_crc32c(data) == tb_records.masked_crc32c(data)
    # the mask by its definition, on one value
    crc = crc32c(b"123456789")
    assert masked_crc32c(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32


def read_records(path: Path) -> list[bytes]:
    """Every record through TensorBoard's reader, which raises DataLossError on a bad CRC."""
    reader = tb_records.PyRecordReader_New(str(path))
    out = []
    while True:
        try:
            reader.GetNext()
        except errors.OutOfRangeError:
            return out
        out.append(reader.record())


def test_records_read_back_and_a_flipped_bit_is_caught(tmp_path: Path) -> None:
    payloads = [b"", b"x", bytes(range(256)) * 3]
    path = tmp_path / "records"
    path.write_bytes(b"".join(record(p) for p in payloads))
    assert read_records(path) == payloads
    framed = record(b"hello")
    assert framed[:8] == struct.pack("<Q", 5) and len(framed) == 8 + 4 + 5 + 4
    for where, what in ((3, "header crc32"), (14, "event crc32")):  # in the length, in the data
        broken = bytearray(framed)
        broken[where] ^= 0x01
        path.write_bytes(bytes(broken))
        with pytest.raises(errors.DataLossError, match=what):
            read_records(path)


def test_varint_matches_protobuf() -> None:
    for step in (0, 1, 127, 128, 300, 2**31, 2**62, -1, -(2**40)):
        parsed = Event.FromString(b"\x10" + varint(step))
        assert parsed.step == step
    assert varint(300) == b"\xac\x02" and len(varint(-1)) == 10


def test_events_parse_with_the_real_protobuf() -> None:
    first = Event.FromString(event(1.7e9 + 0.25, file_version=b"brain.Event:2"))
    assert first.wall_time == 1.7e9 + 0.25 and first.file_version == "brain.Event:2"
    assert first.step == 0 and not first.HasField("summary")
    for value, expected in (
        (0.1, struct.unpack("<f", struct.pack("<f", 0.1))[0]),
        (1e300, math.inf),
        (-1e300, -math.inf),
        (math.inf, math.inf),
    ):
        e = Event.FromString(event(2.0, 12345, summary=scalar_summary("grad_norm/rnn.0.w", value)))
        (v,) = e.summary.value
        assert (e.step, v.tag, v.simple_value) == (12345, "grad_norm/rnn.0.w", expected)
    nan = Event.FromString(event(2.0, 1, summary=scalar_summary("loss/train", math.nan)))
    assert math.isnan(nan.summary.value[0].simple_value)


def test_writer_is_the_same_bytes_as_the_plain_encoders(tmp_path: Path) -> None:
    out = io.BytesIO()
    w = EventWriter(out, 100.0)
    tag = "é/" + "x" * 200  # a tag over 127 bytes: its lengths take two varint bytes
    w.series(tag, [0, 5, 300], [1.5, -2.0, math.inf], [100.5, 101.0, 103.0])
    expected = [record(event(100.0, file_version=b"brain.Event:2"))] + [
        record(event(t, s, summary=scalar_summary(tag, v)))
        for s, v, t in ((0, 1.5, 100.5), (5, -2.0, 101.0), (300, math.inf, 103.0))
    ]
    assert out.getvalue() == b"".join(expected) and w.points == 3
    path = tmp_path / "events.out.tfevents.100.gradlab"
    path.write_bytes(out.getvalue())
    events = [Event.FromString(r) for r in read_records(path)]
    assert [(e.step, e.wall_time) for e in events[1:]] == [(0, 100.5), (5, 101.0), (300, 103.0)]
    assert [e.summary.value[0].tag for e in events[1:]] == [tag] * 3


@pytest.mark.parametrize("width", [2, 7, 200])
def test_a_vector_is_the_histogram_tensorboards_own_code_writes(width: int) -> None:
    """The same Value as TensorBoard's histogram summary of buckets [i, i + 1) with the values
    as counts (its metadata, a float64 tensor of shape (width, 3)), the values exact."""
    import numpy as np
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.histogram import metadata
    from tensorboard.util import tensor_util

    rng = random.Random(width)
    values = [rng.uniform(-1, 1) * 10 ** rng.randint(-300, 300) for _ in range(width)]
    values[-1] = math.inf
    mine = Summary.FromString(vector_summary("temporal/0", Buckets(width).tensor(values)))
    buckets = np.array([np.arange(width), np.arange(1, width + 1), values]).T
    theirs = Summary()
    theirs.value.add(
        tag="temporal/0",
        metadata=metadata.create_summary_metadata(display_name=None, description=None),
        tensor=tensor_util.make_tensor_proto(buckets, dtype=np.float64),
    )
    assert mine == theirs
    got = tensor_util.make_ndarray(mine.value[0].tensor)
    assert got.shape == (width, 3) and got[:, 2].tolist() == values


def test_the_writer_reuses_its_buckets_and_keeps_each_rows_values(tmp_path: Path) -> None:
    from tensorboard.util import tensor_util

    out = io.BytesIO()
    w = EventWriter(out, 100.0)
    rows = [(0, [1.0, 2.0, 3.0]), (10, [4.0, 5.0, 6.0]), (20, [7.0, 8.0])]
    for step, values in rows:
        w.vector("credit", step, values, 100.0 + step)
    path = tmp_path / "events.out.tfevents.100.gradlab"
    path.write_bytes(out.getvalue())
    events = [Event.FromString(r) for r in read_records(path)][1:]
    assert w.points == 3 and [e.step for e in events] == [0, 10, 20]
    got = [tensor_util.make_ndarray(e.summary.value[0].tensor)[:, 2].tolist() for e in events]
    assert got == [values for _, values in rows]
    assert [e.summary.value[0].metadata.plugin_data.plugin_name for e in events] == [
        "histograms"
    ] * 3


def test_the_export_needs_neither_tensorboard_nor_protobuf() -> None:
    code = (
        "import sys, api.main, api.routes.export, api.render.tfevents; "
        "bad = {'tensorboard', 'tensorflow', 'torch', 'google.protobuf'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
