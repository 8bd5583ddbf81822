"""The engine's one error type: a run that cannot start or cannot go on."""


class TrainingError(RuntimeError):
    """A run cannot start or cannot go on; the message says why and what to do."""
