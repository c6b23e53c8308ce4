"""makd-fairseq: low-rank students distilled with Multi-aspect Knowledge Distillation (MaKD).

Importing this package (``--user-dir makd_fairseq``) registers its models, tasks and criterion
and allow-lists the types fairseq checkpoints hold, so they load with ``weights_only`` on.
"""

from .checkpoint import allow_checkpoint_types

allow_checkpoint_types()

from . import criterions, models, tasks  # noqa: E402,F401  (registers them with fairseq)

__version__ = "0.1.0"
