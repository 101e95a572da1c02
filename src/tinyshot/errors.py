"""User-facing errors: the CLI prints these as one clear line instead of a traceback."""


class TinyshotError(Exception):
    """A mistake in the user's input (file, class, option); the message names it."""


class DataError(TinyshotError):
    """Unreadable, missing or unsuitable data."""


class ConfigError(TinyshotError):
    """An option or config value out of range or inconsistent."""


class ModelError(TinyshotError):
    """A model folder, checkpoint or artifact that cannot be used."""


class TrainingError(TinyshotError):
    """Training diverged (NaN loss); the last good checkpoint is kept."""
