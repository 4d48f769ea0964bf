"""What a user does to a run after submitting it: PATCH /v1/experiments/{id} (name, tags, note)
and DELETE /v1/experiments/{id} (a finished run and everything stored for it)."""

from fastapi import APIRouter
from fastapi.responses import Response

from api.deps import Owner, SessionDep
from api.responses import FastJSON
from api.schemas import ExperimentRead
from api.serializers import experiment_view
from core.errors import Problem
from core.lifecycle import delete_finished, edit
from core.owned import get_experiment
from core.spec import ExperimentUpdate

router = APIRouter(prefix="/v1/experiments", tags=["experiments"])


@router.patch("/{experiment_id}", response_model=ExperimentRead, responses={404: {}, 422: {}})
def update_experiment(
    owner: Owner, experiment_id: str, changes: ExperimentUpdate, session: SessionDep
) -> FastJSON:
    """Change the name, the tags (the list given replaces them) or the note, at any status.
    Fields left out stay as they are; `null` or `""` clears the name or the note."""
    row = get_experiment(session, experiment_id, owner)
    given = changes.model_dump(exclude_unset=True)
    if "tags" in given:
        given["tags"] = list(dict.fromkeys(t.strip() for t in given["tags"] or [] if t.strip()))
    for text in ("name", "note"):
        if text in given and not (given[text] or "").strip():
            given[text] = None
    edit(session, row, given)
    return FastJSON(experiment_view(row))


@router.delete("/{experiment_id}", status_code=204, responses={404: {}, 409: {}})
def delete_experiment(owner: Owner, experiment_id: str, session: SessionDep) -> Response:
    """Delete a finished experiment (succeeded, diverged, failed or cancelled) with its
    traces, events and webhook deliveries. A queued or running one is a 409: cancel it
    first."""
    row = get_experiment(session, experiment_id, owner)
    if not delete_finished(session, row.id):
        session.refresh(row)
        raise Problem(
            409,
            "Still active",
            f"experiment is {row.status}: cancel it first, then delete it",
            "active",
            status_value=row.status,
        )
    return Response(status_code=204)
