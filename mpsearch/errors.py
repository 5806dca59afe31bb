"""The one exception hierarchy. Every message is one line naming the problem and the fix."""


class MpsearchError(Exception):
    """Root of every error mpsearch raises on bad input or a failed stage."""


class ConfigError(MpsearchError):
    """A study YAML, profile or search space is malformed."""


class DataError(MpsearchError):
    """A corpus, manifest or audio file cannot be used."""


class RegistryError(MpsearchError, KeyError):
    """A name in a config is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class PolicyError(MpsearchError):
    """A bit-width policy does not fit the model or names invalid choices."""


class TrialError(MpsearchError):
    """A search trial failed (NaN loss, exception); recorded, the study goes on."""
