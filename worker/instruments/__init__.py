"""Instruments: each watches one quantity. `default_instruments` is what a run gets."""

from api.schemas import ExperimentCreate
from worker.instruments.base import Batch, Instrument, Recorder
from worker.instruments.clipping import Clipping
from worker.instruments.grad_norms import GradNorms
from worker.instruments.loss import LossCurve
from worker.instruments.nonfinite import FirstNonfinite
from worker.instruments.saturation import Saturation
from worker.instruments.spectrum import Spectrum
from worker.instruments.temporal import TemporalProfile
from worker.instruments.update_ratio import UpdateRatio

OPTIONAL: dict[str, type[Instrument]] = {
    "temporal": TemporalProfile,
    "spectrum": Spectrum,
    "saturation": Saturation,
    "update_ratio": UpdateRatio,
    "clipping": Clipping,
}


def default_instruments(spec: ExperimentCreate) -> list[Instrument]:
    """Loss, gradient norms and the first non-finite origin always; the others as
    `instrument.on` lists them."""
    return [LossCurve(), GradNorms(), FirstNonfinite()] + [
        OPTIONAL[n]() for n in OPTIONAL if n in spec.instrument.on
    ]


__all__ = ["Batch", "Instrument", "Recorder", "default_instruments"]
