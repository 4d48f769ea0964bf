"""The names of the stored series, written by the instruments and read by the API, in one
place. A name is a group and its keys joined by "/": `spectrum/{layer}/{block}/{quantity}`.
Scalar series have no group."""

LOSS, ACCURACY, VAL_LOSS, VAL_ACCURACY, LR = "loss", "accuracy", "val_loss", "val_accuracy", "lr"
GRAD_NORM_TOTAL = "grad_norm_total"  # the global norm before clipping
CLIP_FIRED, CLIP_AFTER = "clip/fired", "clip/after"

GRAD = "grad"  # grad/{parameter}: that parameter's gradient norm
TEMPORAL = "temporal"  # temporal/{layer}: ||dL/dh_t|| for t in 0..T-1
SPECTRUM = "spectrum"  # spectrum/{layer}/{block}/{sigma_max|radius}
SATURATION = "saturation"  # saturation/{layer}/{kind}
UPDATE_RATIO = "update_ratio"  # update_ratio/{parameter}
WEIGHT_NORM = "weight_norm"  # weight_norm/{parameter}
# The dynamics instruments (issue 13's contract with the diagnosis):
CREDIT = "credit"  # credit: ||dL/dx|| per key input (a vector); credit/ratio (a scalar)
CREDIT_RATIO = "credit/ratio"
LYAPUNOV = "lyapunov"  # lyapunov/{layer}: the top-k exponents
CONDITIONING = "conditioning"  # conditioning/{layer}/{sigma_max|sigma_min}: over the lags
CELL_TEMPORAL = "cell_temporal"  # cell_temporal/{layer}: ||dL/dc_t|| (lstm)
GATES = "gates"  # gates/{layer}/{forget_mean|forget_near_1|forget_near_0}
REACH = "reach"  # reach/{layer} over lags; reach/{layer}/matrix, reach/{layer}/w_hh_split


def name(group: str, *keys: object) -> str:
    return "/".join([group, *(str(k) for k in keys)])


def prefix(group: str) -> str:
    """What every series of `group` starts with (for a prefix query)."""
    return group + "/"


def keys(series: str, group: str) -> list[str]:
    """The keys of a series of `group`: `keys("spectrum/0/hh/radius", SPECTRUM)` is
    `["0", "hh", "radius"]`; [] when the series is not of that group."""
    head = prefix(group)
    return series[len(head) :].split("/") if series.startswith(head) else []


def tail(series: str, group: str) -> str:
    """What follows the group: `tail("grad/rnn.0.weight_hh", GRAD)` is `"rnn.0.weight_hh"`."""
    return "/".join(keys(series, group))


def conditioning_lags(count: int) -> list[int]:
    """The lags of a conditioning series `count` values wide: 1, 2, 4, ..."""
    return [2**i for i in range(count)]
