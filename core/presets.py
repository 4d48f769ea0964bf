"""Built-in studies, `POST /v1/sweeps {"preset": NAME}`."""

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # The story of the seed documents on the adding problem: a vanilla tanh RNN against the
    # mitigations, as the sequence grows. Sized to finish in minutes on a CPU.
    "adding-mitigations": {
        "name": "adding problem: tanh RNN vs. the mitigations, by sequence length",
        "base": {
            "task": {"name": "adding"},
            "model": {"hidden_size": 64},
            "train": {"steps": 1500, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.002}},
            "instrument": {"every": 50, "val_every": 100},
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
        "base": {
            "task": {"name": "copy"},
            "model": {"hidden_size": 64},
            "train": {"steps": 1500, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.002}},
            "instrument": {"every": 50, "val_every": 100},
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
}
