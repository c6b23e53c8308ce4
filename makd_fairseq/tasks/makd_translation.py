"""``makd_translation``: fairseq's translation task plus a frozen teacher (summarization is a language pair too).

The teacher's life cycle is ``TeacherMixin``'s (see ``tasks/teacher.py``); this task adds the check that the
teacher was trained on the data's source and target dictionaries.
"""

import logging
import os
from dataclasses import dataclass

from fairseq.data import Dictionary, data_utils
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from ..checkpoint import CheckpointError, model_args
from .teacher import TeacherMixin, check_data_dirs, first_difference, teacher_path_field

logger = logging.getLogger(__name__)


@dataclass
class MakdTranslationConfig(TranslationConfig):
    teacher_path: str = teacher_path_field()


@register_task("makd_translation", dataclass=MakdTranslationConfig)
class MakdTranslationTask(TeacherMixin, TranslationTask):
    cfg: MakdTranslationConfig

    @classmethod
    def setup_task(cls, cfg: MakdTranslationConfig, **kwargs):
        check_data_dirs(cfg.data)
        return super().setup_task(cfg, **kwargs)

    def check_dictionaries(self, state: dict, path: str) -> None:
        """The teacher must have been trained on this vocabulary: compare symbols where its dictionaries
        are still on disk, else at least the embedding sizes."""
        tcfg = state["cfg"]["task"] if state.get("cfg") is not None else model_args(state)
        tdata = str(getattr(tcfg, "data", "") or "").split(os.pathsep)[0]
        sizes = {"src": state["model"]["encoder.embed_tokens.weight"].size(0),
                 "tgt": state["model"]["decoder.embed_tokens.weight"].size(0)}
        tlangs = (getattr(tcfg, "source_lang", None), getattr(tcfg, "target_lang", None))
        if None in tlangs and os.path.isdir(tdata):  # fairseq infers them from the file names, so do we
            tlangs = data_utils.infer_language_pair(tdata)
        for side, tlang, ours in (("src", tlangs[0], self.src_dict), ("tgt", tlangs[1], self.tgt_dict)):
            dict_path = os.path.join(tdata, f"dict.{tlang}.txt")
            if tdata and os.path.isfile(dict_path):
                diff = first_difference(ours, Dictionary.load(dict_path))
                if diff:
                    raise CheckpointError(f"teacher {path}: its {side} dictionary ({dict_path}) differs from the "
                                          f"data's ({self.cfg.data}): {diff}")
            elif sizes[side] != len(ours):
                raise CheckpointError(f"teacher {path}: its {side} embedding has {sizes[side]} rows but the data's "
                                      f"{side} dictionary has {len(ours)} entries")
            else:
                logger.warning(f"teacher dictionary {dict_path} not found: checked sizes only")
