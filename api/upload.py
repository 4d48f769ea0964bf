"""The dataset upload's multipart/form-data body, read as it arrives: the part named `file`
written straight to a temporary file, the other fields kept as text (FORM_SLACK bytes at most
in all), every refusal a problem naming the field.

Reading a 200 MB upload's body grew the API's memory by 1.0 to 1.2 MiB with Starlette's
parser, 0.5 to 0.8 MiB with this, nearly all of it uvicorn's own (its read buffer, touched
for the first time, and its copies of each read of 256 KB): Starlette's parser copies each
piece once more (a slice), its stream (an async generator) keeps the last message alive while
the next is received, and it awaits a thread for each write while the server reads on. Here
a message is parsed and its file bytes written, by memoryview, before the next is received,
and the message is dropped first. The writes are made on the event loop: one server read at
most each, to the page cache."""

from __future__ import annotations

import ctypes
import tempfile
from typing import IO, Any

from fastapi import HTTPException
from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, Headers, UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive

from core.errors import Problem, field_error, invalid_field

FILE_FIELD = "file"
FORM_SLACK = 64 * 1024  # the part headers, boundaries and text fields around the file


class FormRefused(HTTPException):
    """A refusal raised while the form is read: FastAPI lets an HTTPException out of its body
    reading (anything else becomes a bare 400), and the route turns it into its problem."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.status, problem.detail)
        self.problem = problem


def malformed(detail: str) -> FormRefused:
    return FormRefused(
        Problem(
            400,
            "Malformed form",
            detail,
            "form",
            errors=[field_error(FILE_FIELD, detail, "form")],
        )
    )


class StreamedForm(Request):
    """A request whose multipart form is read by `read_form` (FastAPI's File and Form
    parameters, and their validation, work on what it returns)."""

    async def _get_form(self, **_limits: Any) -> FormData:
        if self._form is None:
            kind, _ = parse_options_header(self.headers.get("content-type"))
            if kind != b"multipart/form-data":
                raise FormRefused(
                    invalid_field(
                        "the upload must be multipart/form-data with the file in the field "
                        f"{FILE_FIELD!r} (curl -F {FILE_FIELD}=@data.npz)",
                        FILE_FIELD,
                        "not a multipart form",
                        "missing",
                    )
                )
            self._form = await read_form(self.headers, self.receive)
        return self._form


class _Parts:
    """python-multipart's callbacks: where each part's bytes go."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str | UploadFile]] = []
        self.upload: UploadFile | None = None
        self.text_bytes = 0
        self.ended = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: list[tuple[bytes, bytes]] = []
        self._name = ""
        self._out: IO[bytes] | None = None
        self._text = bytearray()

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": lambda data, start, end: self._header_name.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
            "on_end": self.end,
        }

    def part_begin(self) -> None:
        self._headers, self._out, self._text = [], None, bytearray()

    def header_end(self) -> None:
        self._headers.append((bytes(self._header_name).lower(), bytes(self._header_value)))
        self._header_name.clear()
        self._header_value.clear()

    def headers_finished(self) -> None:
        disposition = dict(self._headers).get(b"content-disposition", b"")
        _, options = parse_options_header(disposition)
        if b"name" not in options:
            raise malformed("a part of the form has no name (Content-Disposition: form-data)")
        self._name = _text(options[b"name"], "a form field's name", None)
        if self._name != FILE_FIELD:
            self._count_text(len(self._name))
            return
        if self.upload is not None:
            raise FormRefused(
                invalid_field(
                    f"the form holds more than one {FILE_FIELD!r}; one file per upload",
                    FILE_FIELD,
                    "more than one file",
                    "value",
                )
            )
        filename = _text(options.get(b"filename", b""), "the file name", FILE_FIELD)
        self._out = tempfile.TemporaryFile()  # noqa: SIM115 - closed with the form
        self.upload = UploadFile(
            self._out, size=0, filename=filename or None, headers=Headers(raw=self._headers)
        )

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self._out is not None:
            self._out.write(memoryview(data)[start:end])
            return
        self._count_text(end - start)
        self._text.extend(memoryview(data)[start:end])

    def _count_text(self, n: int) -> None:
        self.text_bytes += n
        if self.text_bytes > FORM_SLACK:
            raise FormRefused(
                invalid_field(
                    f"the form fields besides {FILE_FIELD!r} hold over {FORM_SLACK} bytes "
                    f"(field {self._name!r}); the dataset goes in the field {FILE_FIELD!r}",
                    self._name,
                    "too long",
                    "too_long",
                )
            )

    def part_end(self) -> None:
        if self._out is None:
            value = _text(bytes(self._text), f"the field {self._name!r}", self._name)
            self.items.append((self._name, value))
            return
        assert self.upload is not None
        self.upload.size = self._out.tell()
        self._out.seek(0)
        self.items.append((FILE_FIELD, self.upload))
        self._out = None

    def end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self.upload is not None:
            self.upload.file.close()


def _text(raw: bytes, what: str, field: str | None) -> str:
    """A part's name or text as UTF-8 (anything else as Latin-1, as Starlette reads it); a NUL
    is refused, since PostgreSQL cannot store one."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    if "\x00" in text:
        raise FormRefused(invalid_field(f"{what} holds a NUL byte", field, "NUL", "nul"))
    return text


async def read_form(headers: Headers, receive: Receive) -> FormData:
    """The form, its file part on disk; a body that ends before the form does stores nothing."""
    _, options = parse_options_header(headers.get("content-type"))
    if b"boundary" not in options:
        raise malformed("the multipart Content-Type has no boundary")
    parts = _Parts()
    try:
        parser = MultipartParser(options[b"boundary"], parts.callbacks())
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect
            more = message.get("more_body", False)
            parser.write(message.get("body", b""))
            del message  # before the next receive: the server reads into memory of its own
        if not parts.ended:
            raise malformed("the body ended before the form did (a cut-off upload)")
    except FormParserError as exc:
        parts.close()
        raise malformed(f"the multipart form is malformed: {exc}") from exc
    except BaseException:
        parts.close()
        raise
    release_freed_memory()
    return FormData(parts.items)


def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc's, among the running process's symbols
    except (AttributeError, OSError, TypeError):  # musl, macOS, Windows
        return None


MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Hand the memory the body's reading freed back to the OS. glibc keeps it in the event
    loop thread's heap, where validation and storage (in a worker thread, in an arena of its
    own) cannot reuse it: kept, it and theirs added up to 1.1 MiB of peak growth during a
    200 MB upload, handed back 0.6 MiB (bench/dataset_upload.py). It also hands back what
    earlier requests freed; with nothing of that left (trimmed just before the upload) the
    peak growth was 0.6 to 0.8 MiB. About 0.2 ms."""
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)
