"""Built-in studies, `POST /v1/sweeps {"preset": NAME}`, and what each one costs."""

import math
from typing import Any

FLOSSING = {"weight": 0.1, "k": 4, "every": 1}  # what the diagnosis suggests
CHAOTIC = {"recurrent": "normal", "gain": 3.0}  # lambda_1 about +0.2 per step at init

PRESETS: dict[str, dict[str, Any]] = {
    # The story of the seed documents on the adding problem: a vanilla tanh RNN against the
    # mitigations, as the sequence grows. Sized to finish in minutes on a CPU.
    "adding-mitigations": {
        "name": "adding problem: tanh RNN vs. the mitigations, by sequence length",
        "description": "Which mitigation lets a recurrent net carry two numbers across the "
        "sequence: a tanh RNN with and without clipping and layer norm, an IRNN, an LSTM (plain "
        "and chrono-initialised), a GRU and an orthogonal W_hh, at T = 25, 50 and 100.",
        "base": {
            "task": {"name": "adding"},
            "model": {"hidden_size": 64},
            "train": {"steps": 1500, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.002}},
            # lambda_1 is read over the last 5 instrumented steps too (reported beside the
            # profile's rate): on every instrumented step, not at step 0 and two more.
            "instrument": {"every": 50, "val_every": 100, "dynamics_every": 1},
        },
        "grid": {
            "task.seq_len": [25, 50, 100],
            "variant": [
                {"label": "tanh RNN", "train": {"clip": {"mode": "none"}}},
                {"label": "tanh RNN + clip", "train": {"clip": {"mode": "norm", "max_norm": 1.0}}},
                {"label": "tanh RNN + layer norm", "model": {"norm": "layer"}},
                {
                    "label": "IRNN (relu, identity)",
                    "model": {"activation": "relu", "init": {"recurrent": "identity"}},
                },
                {"label": "LSTM", "model": {"cell": "lstm"}},
                {"label": "GRU", "model": {"cell": "gru"}},
                {"label": "tanh RNN, orthogonal W_hh", "model": {"recurrent_param": "orthogonal"}},
                {"label": "LSTM, chrono init", "model": {"cell": "lstm", "init": {"chrono": True}}},
            ],
        },
        "seeds": [0, 1],
    },
    # Copy memory: a loss at every step, so the verdict reads the recall loss's reach and the
    # credit at the symbols, not the mixed h-profile. 10 symbols from 8; chance accuracy 1/8.
    "copy-mitigations": {
        "name": "copy memory: tanh RNN vs. the mitigations, by delay",
        "description": "Which cell remembers 10 symbols over a delay of 10, 25 and 50 steps: a "
        "tanh RNN (plain and with an orthogonal W_hh), an LSTM (plain, forget bias 1, chrono) "
        "and a GRU; a loss at every step, so the verdict reads the recall loss's reach.",
        "base": {
            "task": {"name": "copy"},
            "model": {"hidden_size": 64},
            "train": {"steps": 1500, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.002}},
            # The verdict reads the reach (and lambda_1) over the last 5 instrumented steps:
            # on every instrumented step, so that window is the end of the run, not step 0.
            "instrument": {"every": 50, "val_every": 100, "dynamics_every": 1},
        },
        "grid": {
            "task.seq_len": [10, 25, 50],
            "variant": [
                {"label": "tanh RNN"},
                {"label": "tanh RNN, orthogonal W_hh", "model": {"recurrent_param": "orthogonal"}},
                {"label": "LSTM", "model": {"cell": "lstm"}},
                {
                    "label": "LSTM, forget bias 1",
                    "model": {"cell": "lstm", "init": {"forget_bias": 1.0}},
                },
                {"label": "LSTM, chrono init", "model": {"cell": "lstm", "init": {"chrono": True}}},
                {"label": "GRU", "model": {"cell": "gru"}},
            ],
        },
        "seeds": [0, 1],
    },
    # Gradient flossing (Engelken 2023) on the adding problem: the same tanh RNN with and
    # without the penalty that pushes the top Lyapunov exponents toward 0, from an orthogonal
    # W_hh (lambda_1 < 0 once trained: vanishing) and from a chaotic one (W ~ N(0, 3^2/N),
    # lambda_1 > 0), clipped alike so that the chaotic net is not simply a NaN.
    "flossing": {
        "name": "gradient flossing: a tanh RNN with and without it, on the adding problem",
        "description": "What pushing the top Lyapunov exponents toward 0 during training does "
        "to lambda_1, the loss and the verdict: a tanh RNN (orthogonal W_hh, and a chaotic "
        "normal W_hh of gain 3) with and without train.flossing (weight 0.1, k = 4, every "
        "step), clip by norm 1 for all, at T = 25, 50 and 100.",
        "base": {
            "task": {"name": "adding"},
            "model": {"hidden_size": 64},
            "train": {
                "steps": 1500,
                "batch_size": 32,
                "optimizer": {"name": "adam", "lr": 0.002},
                "clip": {"mode": "norm", "max_norm": 1.0},
            },
            "instrument": {"every": 50, "val_every": 100, "dynamics_every": 1},
        },
        "grid": {
            "task.seq_len": [25, 50, 100],
            "variant": [
                {"label": "tanh RNN"},
                {"label": "tanh RNN + flossing", "train": {"flossing": FLOSSING}},
                {"label": "tanh RNN, chaotic W_hh", "model": {"init": CHAOTIC}},
                {
                    "label": "tanh RNN, chaotic W_hh + flossing",
                    "model": {"init": CHAOTIC},
                    "train": {"flossing": FLOSSING},
                },
            ],
        },
        "seeds": [0, 1],
    },
}


# Cost units (core.spec.estimated_cost: the multiply-adds of the recurrence) one worker gets
# through per second with the default instruments, on one thread of the 2-core development
# machine: the default spec (cost 4.2e11) took about 8 minutes (8.7e8/s), the 36 runs of the
# adding study 1,228 worker-seconds (6.7e8/s). An order of magnitude, for planning; a running
# experiment's own `progress.eta_s` is measured.
COST_PER_SECOND = 7e8


def preset_info(name: str, max_cost: float) -> dict[str, Any]:
    """A preset as `GET /v1/sweeps/presets` lists it: what it studies, how many runs, and about
    how long they take on one worker and on four."""
    from core.spec import SweepCreate, estimated_cost
    from core.sweeps import expand, resolve

    preset = PRESETS[name]
    points = expand(resolve(SweepCreate(preset=name)), max_cost)
    seconds = sum(estimated_cost(spec) for _, spec in points) / COST_PER_SECOND
    return {
        "name": preset["name"],
        "description": preset["description"],
        "grid": preset["grid"],
        "seeds": preset["seeds"],
        "runs": len(points),
        "estimated_seconds": {
            "one_worker": math.ceil(seconds),
            "four_workers": math.ceil(seconds / 4),
        },
    }
