from . import makd  # noqa: F401
