"""Instruments: each watches one quantity. `default_instruments` is what a run gets."""

from core.spec import OPTIONAL_INSTRUMENTS, ExperimentCreate
from worker.instruments.base import Batch, Instrument, Recorder
from worker.instruments.clipping import Clipping
from worker.instruments.credit import Credit
from worker.instruments.exploding import ExplodingAlarm
from worker.instruments.gates import ForgetGates
from worker.instruments.grad_norms import GradNorms
from worker.instruments.loss import LossCurve
from worker.instruments.lyapunov import Lyapunov
from worker.instruments.nonfinite import FirstNonfinite
from worker.instruments.reach import Reach
from worker.instruments.saturation import Saturation
from worker.instruments.spectrum import Spectrum
from worker.instruments.temporal import TemporalProfile
from worker.instruments.update_ratio import UpdateRatio
from worker.instruments.vanishing import VanishingAlarm

# One line per optional instrument, keyed by its name in core.spec.OPTIONAL_INSTRUMENTS.
OPTIONAL: dict[str, type[Instrument]] = {
    "temporal": TemporalProfile,
    "spectrum": Spectrum,
    "saturation": Saturation,
    "update_ratio": UpdateRatio,
    "clipping": Clipping,
    "gates": ForgetGates,
    "credit": Credit,
    "lyapunov": Lyapunov,
    "reach": Reach,
}


def default_instruments(spec: ExperimentCreate) -> list[Instrument]:
    """Loss, gradient norms and the first non-finite origin always; the others as
    `instrument.on` lists them; an alarm for each running event a webhook subscribes to."""
    optional = [OPTIONAL[n]() for n in OPTIONAL_INSTRUMENTS if n in spec.instrument.on]
    events = spec.notify.events if spec.notify is not None else []
    alarms: list[Instrument] = []
    if "exploding" in events:
        alarms.append(ExplodingAlarm())
    temporal = next((i for i in optional if isinstance(i, TemporalProfile)), None)
    if "vanishing" in events and temporal is not None:
        alarms.append(VanishingAlarm(temporal))  # after the profile it reads
    return [LossCurve(), GradNorms(), FirstNonfinite()] + optional + alarms


__all__ = ["Batch", "Instrument", "Recorder", "default_instruments"]
