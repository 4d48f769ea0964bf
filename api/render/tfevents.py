"""TensorBoard event files written by hand: TFRecord framing around serialized
`tensorflow.Event` protobufs, holding scalar summaries (`simple_value`) and, for the vector
series, the histograms plugin's tensor summaries.

The API must not import torch or tensorflow and does not need the `tensorboard` package at run
time, so the few bytes of protobuf are encoded here (the CRC32C comes from google-crc32c, a
small C extension with no dependencies). Only what these need:

    Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
    Summary { repeated Value value = 1; }
    Value   { string tag = 1; float simple_value = 2; TensorProto tensor = 8;
              SummaryMetadata metadata = 9; }
    SummaryMetadata { PluginData plugin_data = 1; }   PluginData { string plugin_name = 1; }
    TensorProto { DataType dtype = 1; TensorShapeProto tensor_shape = 2; bytes tensor_content = 4; }
    TensorShapeProto { repeated Dim dim = 2; }   Dim { int64 size = 1; }

A vector (a temporal profile over t, the credit per key input, the top-k exponents, ...) is
written as what `tf.summary.histogram` writes, a float64 tensor of k buckets
`[left edge, right edge, count]`, with bucket i = `[i, i + 1)` and the vector's i-th value as
its count: TensorBoard's Histograms tab then draws each step's vector over its index (a
profile over t, one curve per training step), and the values are the stored float64 ones,
exactly.

A record is: uint64 length (little-endian), uint32 masked CRC32C of those 8 bytes, the data,
uint32 masked CRC32C of the data. TensorBoard's reader checks both CRCs."""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import BinaryIO

import google_crc32c

FILE_VERSION = b"brain.Event:2"
_MASK_DELTA = 0xA282EAD8


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord uses it. From google-crc32c's C code: with a
    pure-Python table, writing 100,000 scalar points took four times as long
    (bench/export_volume.py)."""
    return google_crc32c.value(data)


def masked_crc32c(data: bytes) -> int:
    """TFRecord stores the CRC rotated and offset, so that a CRC over data that itself holds
    CRCs does not degenerate."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


@lru_cache(maxsize=4096)
def _header(length: int) -> bytes:
    # Scalar events come in few distinct lengths: their header and its CRC are reused.
    head = struct.pack("<Q", length)
    return head + struct.pack("<I", masked_crc32c(head))


def record(data: bytes) -> bytes:
    """One TFRecord: the framed, checksummed `data`."""
    return _header(len(data)) + data + struct.pack("<I", masked_crc32c(data))


def varint(n: int) -> bytes:
    """Protobuf base-128 varint; negative int64 as its two's complement (ten bytes)."""
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, wire_type: int) -> bytes:
    return varint((number << 3) | wire_type)


def _delimited(number: int, payload: bytes) -> bytes:
    return _field(number, 2) + varint(len(payload)) + payload


def _float32(value: float) -> bytes:
    try:
        return struct.pack("<f", value)
    except OverflowError:  # beyond float32's range: an exploding norm is inf there, not an error
        return struct.pack("<f", float("inf") if value > 0 else float("-inf"))


_WALL_TIME = _field(1, 1)  # fixed64 (double)
_STEP = _field(2, 0)  # varint
_SIMPLE_VALUE = _field(2, 5)  # fixed32 (float)


def event(
    wall_time: float, step: int = 0, *, file_version: bytes | None = None, summary: bytes = b""
) -> bytes:
    """A serialized Event; `summary` is an encoded Summary message (see `scalar_summary`)."""
    out = _WALL_TIME + struct.pack("<d", wall_time)
    if step:  # proto3 leaves zero out
        out += _STEP + varint(step)
    if file_version is not None:
        out += _delimited(3, file_version)
    if summary:
        out += _delimited(5, summary)
    return out


def scalar_summary(tag: str, value: float) -> bytes:
    """A Summary with one Value{tag, simple_value}."""
    return _delimited(1, _delimited(1, tag.encode()) + _SIMPLE_VALUE + _float32(value))


DT_DOUBLE = 2
HISTOGRAMS_PLUGIN = b"histograms"
# SummaryMetadata{plugin_data: PluginData{plugin_name: "histograms"}}; the plugin's own data
# (HistogramPluginData{version: 0}) serialises to nothing.
_HISTOGRAM_METADATA = _delimited(9, _delimited(1, _delimited(1, HISTOGRAMS_PLUGIN)))


def _little_endian(a: array) -> bytes:
    if sys.byteorder != "little":
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


class Buckets:
    """The histogram buckets of vectors `width` long: the edges [i, i + 1) fixed, the counts the
    vector's values. One buffer reused for every row of a series."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.cells = array("d", [0.0]) * (3 * width)  # row-major (width, 3)
        self.cells[0::3] = array("d", map(float, range(width)))
        self.cells[1::3] = array("d", map(float, range(1, width + 1)))
        # TensorShapeProto{dim: [{size: width}, {size: 3}]}
        shape = _delimited(2, _field(1, 0) + varint(width)) + _delimited(
            2, _field(1, 0) + varint(3)
        )
        self.head = _field(1, 0) + varint(DT_DOUBLE) + _delimited(2, shape)

    def tensor(self, values: Sequence[float]) -> bytes:
        """A serialized TensorProto: float64, shape (width, 3), the values as the counts."""
        self.cells[2::3] = array("d", values)
        return self.head + _delimited(4, _little_endian(self.cells))


def vector_summary(tag: str, tensor: bytes) -> bytes:
    """A Summary with one Value{tag, tensor, metadata: the histograms plugin}."""
    return _delimited(1, _delimited(1, tag.encode()) + _delimited(8, tensor) + _HISTOGRAM_METADATA)


class EventWriter:
    """Writes an event file to `out`: the file-version record, then scalar and vector events.

    The Summary bytes for a scalar tag differ between points only in the last four (the float),
    so the tag's prefix is encoded once per series, not once per point."""

    def __init__(self, out: BinaryIO, wall_time: float) -> None:
        self.out = out
        self.points = 0
        self._buckets: dict[int, Buckets] = {}  # by width
        out.write(record(event(wall_time, file_version=FILE_VERSION)))

    def series(
        self, tag: str, steps: Iterable[int], values: Iterable[float], wall_times: Iterable[float]
    ) -> None:
        """Points of one tag; the three iterables run in step."""
        value_head = _delimited(1, tag.encode()) + _SIMPLE_VALUE
        value_len = len(value_head) + 4
        summary_head = _field(1, 2) + varint(value_len) + value_head
        event_summary_head = _field(5, 2) + varint(len(summary_head) + 4) + summary_head
        wall, step_key, pack_d, pack_f = _WALL_TIME, _STEP, struct.Struct("<d").pack, _float32
        chunk = []
        for step, value, wt in zip(steps, values, wall_times, strict=True):
            data = wall + pack_d(wt)
            if step:
                data += step_key + varint(step)
            data += event_summary_head + pack_f(value)
            chunk.append(record(data))
            self.points += 1
        self.out.write(b"".join(chunk))

    def vector(self, tag: str, step: int, values: Sequence[float], wall_time: float) -> None:
        """One point of a vector tag as a histogram tensor (see Buckets)."""
        buckets = self._buckets.get(len(values))
        if buckets is None:
            buckets = self._buckets[len(values)] = Buckets(len(values))
        summary = vector_summary(tag, buckets.tensor(values))
        self.out.write(record(event(wall_time, step, summary=summary)))
        self.points += 1
