from . import makd_language_modeling, makd_translation  # noqa: F401
