"""Errors of the core, all ValueErrors, so callers can tell bad input from bugs."""


class VPRError(ValueError):
    """Base class: input or data the core refuses, with a message a person can act on."""


class ImageError(VPRError):
    """An image that cannot be embedded (empty, wrong channel count, unknown encoding...)."""


class PoseError(VPRError):
    """A pose that cannot be used (NaN, zero quaternion, stamps going backwards)."""


class ModelFileError(VPRError):
    """A model file that is missing, corrupt, unsafe or has missing/unknown fields."""


class MapError(VPRError):
    """A map directory that cannot be read or written."""


class MapMismatchError(MapError):
    """A map made with another model (fingerprint) or descriptor dimension."""


class MapLockedError(MapError):
    """A map directory held by another process: two writers would lose each other's keyframes."""
