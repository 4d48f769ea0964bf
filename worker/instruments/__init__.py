"""Instruments: each watches one quantity. `default_instruments` is what a run gets."""

from api.schemas import ExperimentCreate
from worker.instruments.base import Batch, Instrument, Recorder
from worker.instruments.grad_norms import GradNorms
from worker.instruments.loss import LossCurve
from worker.instruments.temporal import TemporalProfile


def default_instruments(spec: ExperimentCreate) -> list[Instrument]:
    return [LossCurve(), GradNorms(), TemporalProfile()]


__all__ = ["Batch", "Instrument", "Recorder", "default_instruments"]
