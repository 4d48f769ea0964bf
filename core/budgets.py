"""The budgets a spec must fit before it is stored: compute, peak worker memory and stored
trace volume (the estimates are core/spec.py's). Over one, a 422 that states the estimate, the
limit and the field to change; the same check for an experiment and for every sweep point."""

from dataclasses import dataclass
from typing import Any

from core.errors import Problem, field_error
from core.settings import Settings
from core.spec import (
    ExperimentCreate,
    TaskShape,
    estimated_cost,
    estimated_memory,
    estimated_trace_bytes,
)


@dataclass(frozen=True)
class Limits:
    max_cost: float
    max_memory: float = float("inf")
    max_trace_bytes: float = float("inf")

    @classmethod
    def of(cls, settings: Settings) -> "Limits":
        return cls(settings.max_cost, settings.max_worker_memory, settings.max_trace_bytes)


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_budgets(
    spec: ExperimentCreate,
    limits: Limits,
    point: dict[str, Any] | None = None,
    shape: TaskShape | None = None,
) -> None:
    """Raise the 422 of the first budget `spec` is over; `point`: the sweep's grid point;
    `shape`: an uploaded dataset's T and F (task `dataset`), read from its row."""
    where = "" if point is None else f"the point {point}: "
    extra: dict[str, Any] = {} if point is None else {"point": point}
    cost = estimated_cost(spec, shape)
    if cost > limits.max_cost:
        raise Problem(
            422,
            "Over the compute budget",
            f"{where}estimated cost {cost:.3g} (steps x batch x T x gates x hidden x (hidden x "
            "layers + F)) "
            f"is over the limit {limits.max_cost:.3g}",
            "budget",
            estimate=cost,
            limit=limits.max_cost,
            errors=[field_error("train.steps", "over the compute budget", "budget")],
            **extra,
        )
    memory = estimated_memory(spec, shape)
    if memory > limits.max_memory:
        raise Problem(
            422,
            "Over the memory budget",
            f"{where}estimated peak worker memory {_gib(memory)} (batch x T x hidden x layers, "
            f"with the validation batch and the instruments) is over MAX_WORKER_MEMORY "
            f"{_gib(limits.max_memory)}: lower train.batch_size, task.seq_len, "
            "model.hidden_size or model.num_layers",
            "memory-budget",
            estimate=memory,
            limit=limits.max_memory,
            errors=[field_error("train.batch_size", "over the memory budget", "budget")],
            **extra,
        )
    volume = estimated_trace_bytes(spec, shape)
    if volume > limits.max_trace_bytes:
        raise Problem(
            422,
            "Over the stored-volume budget",
            f"{where}the run would store about {_gib(volume)} of traces, over MAX_TRACE_BYTES "
            f"{_gib(limits.max_trace_bytes)}: raise instrument.every, lower train.steps, or "
            "leave 'temporal' out of instrument.on",
            "volume-budget",
            estimate=volume,
            limit=limits.max_trace_bytes,
            errors=[field_error("instrument.every", "over the stored-volume budget", "budget")],
            **extra,
        )
