"""/v1/datasets: upload (multipart field `file`, an .npz), list, read, delete an owner's own
sequences. Validation and storage are core's (core/datasets.py); this reads the request."""

from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.routing import APIRoute
from sqlalchemy import select
from starlette.responses import Response
from starlette.types import Message

from api.deps import Owner, SessionDep, current_owner
from api.problems import problem_response
from api.responses import FastJSON
from api.upload import FORM_SLACK, FormRefused, StreamedForm
from core import datasets
from core.owned import get_dataset
from core.settings import get_settings
from core.tables import Dataset


class BoundedUpload(APIRoute):
    """Authenticate before a byte of the body is read, refuse a Content-Length over the limit
    at once, and count the body as it arrives: the form is read by api/upload.py, the file
    straight to disk, and this stops it as soon as the upload passes MAX_DATASET_BYTES."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            if request.method != "POST":
                return await handler(request)
            request.state.owner = await current_owner(request)
            limit = get_settings().max_dataset_bytes
            too_large = datasets.too_large(limit)
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit + FORM_SLACK:
                return problem_response(
                    413, too_large.title, too_large.detail, too_large.kind, **too_large.extra
                )
            seen = 0
            receive = request.receive

            async def counted() -> Message:
                nonlocal seen
                message = await receive()
                seen += len(message.get("body", b""))
                if seen > limit + FORM_SLACK:
                    raise HTTPException(413, too_large.detail)
                return message

            try:
                return await handler(StreamedForm(request.scope, counted))
            except FormRefused as exc:
                raise exc.problem from None
            except HTTPException as exc:
                if exc.status_code != 413:
                    raise
                return problem_response(
                    413, too_large.title, too_large.detail, too_large.kind, **too_large.extra
                )

        return bounded


router = APIRouter(prefix="/v1/datasets", tags=["datasets"], route_class=BoundedUpload)


def uploader(request: Request) -> str:
    return request.state.owner  # set by BoundedUpload before the body was read


@router.post("", status_code=201, responses={400: {}, 413: {}, 422: {}})
def upload_dataset(
    owner: Annotated[str, Depends(uploader)],
    session: SessionDep,
    file: Annotated[UploadFile, File(description="an .npz with x, y and optionally lengths")],
    name: Annotated[str | None, Form(max_length=datasets.MAX_NAME)] = None,
    kind: Annotated[
        Literal["classification", "regression"] | None,
        Form(description="default: classification for integer y, regression for float y"),
    ] = None,
) -> FastJSON:
    """Validated whole before anything is stored; the same bytes are stored once."""
    settings = get_settings()
    found = datasets.inspect_npz(file.file, kind, settings.max_dataset_bytes)
    # the file name stands in for a missing name, cut to the column (PostgreSQL refuses more)
    name = name or (file.filename or "")[: datasets.MAX_NAME] or None
    row = datasets.store(session, owner, name, file.file, found, settings.dataset_chunk_bytes)
    return FastJSON(
        datasets.view(row), status_code=201, headers={"Location": f"/v1/datasets/{row.id}"}
    )


@router.get("")
def list_datasets(
    owner: Owner, session: SessionDep, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> FastJSON:
    """The owner's datasets, newest first."""
    q = select(Dataset).where(Dataset.owner == owner)
    q = q.order_by(Dataset.created_at.desc(), Dataset.id.desc()).limit(limit)
    return FastJSON({"items": [datasets.view(r) for r in session.scalars(q)]})


@router.get("/{dataset_id}")
def read_dataset(owner: Owner, dataset_id: str, session: SessionDep) -> FastJSON:
    return FastJSON(datasets.view(get_dataset(session, dataset_id, owner)))


@router.delete("/{dataset_id}", status_code=204, responses={404: {}, 409: {}})
def delete_dataset(owner: Owner, dataset_id: str, session: SessionDep) -> Response:
    """Refused (409) while a queued or running experiment uses it; the stored bytes go with
    the last dataset that points at them."""
    datasets.remove(session, get_dataset(session, dataset_id, owner))
    return Response(status_code=204)
