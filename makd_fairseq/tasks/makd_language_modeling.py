"""``makd_language_modeling``: fairseq's language_modeling task plus a frozen teacher (see ``tasks/teacher.py``).

The teacher must have been trained on the data's ``dict.txt``. Use ``--sample-break-mode complete`` (or
``none``/``complete_doc``): fairseq's ``eos`` mode calls ``np.compat``, which numpy 2 removed.
"""

import logging
import os
from dataclasses import dataclass

from fairseq.data import Dictionary
from fairseq.tasks import register_task
from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask

from ..checkpoint import CheckpointError, model_args
from .teacher import TeacherMixin, check_data_dirs, first_difference, teacher_path_field

logger = logging.getLogger(__name__)


@dataclass
class MakdLanguageModelingConfig(LanguageModelingConfig):
    teacher_path: str = teacher_path_field()


@register_task("makd_language_modeling", dataclass=MakdLanguageModelingConfig)
class MakdLanguageModelingTask(TeacherMixin, LanguageModelingTask):

    @classmethod
    def setup_task(cls, args, **kwargs):
        check_data_dirs(args.data)
        return super().setup_task(args, **kwargs)

    def check_dictionaries(self, state: dict, path: str) -> None:
        """Compare symbols with the teacher's dict.txt where it is still on disk, else the embedding size."""
        tcfg = state["cfg"]["task"] if state.get("cfg") is not None else model_args(state)
        tdata = str(getattr(tcfg, "data", "") or "")
        dict_path = os.path.join(tdata.split(os.pathsep)[0], "dict.txt")
        rows = state["model"]["decoder.embed_tokens.weight"].size(0)
        if tdata and os.path.isfile(dict_path):
            diff = first_difference(self.dictionary, Dictionary.load(dict_path))
            if diff:
                raise CheckpointError(f"teacher {path}: its dictionary ({dict_path}) differs from the data's "
                                      f"({self.args.data}): {diff}")
        elif rows != len(self.dictionary):
            raise CheckpointError(f"teacher {path}: its embedding has {rows} rows but the data's dictionary has "
                                  f"{len(self.dictionary)} entries")
        else:
            logger.warning(f"teacher dictionary {dict_path} not found: checked sizes only")
