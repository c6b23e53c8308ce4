from . import makd_translation  # noqa: F401
