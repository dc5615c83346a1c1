"""What only the two scripts use: their shared options, the command-line wrapper (one-line errors, signals,
the resume hint) and the builders of data, models and runners. The training loop lives in ``helper``."""
