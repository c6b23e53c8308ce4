"""``makd_translation``: fairseq's translation task plus a frozen teacher (summarization is a language pair too).

The teacher's life cycle is ``TeacherMixin``'s (see ``tasks/teacher.py``); this task adds the check that the
teacher was trained on the data's source and target dictionaries. A resume keeps ``--patience``'s state
(``tasks/patience.py``).
"""

import os
from dataclasses import dataclass

from fairseq.data import data_utils
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from .patience import PatienceStateMixin
from .teacher import TeacherMixin, check_data_dirs, teacher_path_field


@dataclass
class MakdTranslationConfig(TranslationConfig):
    teacher_path: str = teacher_path_field()


@register_task("makd_translation", dataclass=MakdTranslationConfig)
class MakdTranslationTask(PatienceStateMixin, TeacherMixin, TranslationTask):
    cfg: MakdTranslationConfig

    @classmethod
    def setup_task(cls, cfg: MakdTranslationConfig, **kwargs):
        check_data_dirs(cfg.data)
        return super().setup_task(cfg, **kwargs)

    def teacher_dictionaries(self, tcfg, tdata: str):
        tlangs = (getattr(tcfg, "source_lang", None), getattr(tcfg, "target_lang", None))
        if None in tlangs and os.path.isdir(tdata):  # fairseq infers them from the file names, so do we
            tlangs = data_utils.infer_language_pair(tdata)
        return [("src ", f"dict.{tlangs[0]}.txt", self.src_dict, "encoder.embed_tokens.weight"),
                ("tgt ", f"dict.{tlangs[1]}.txt", self.tgt_dict, "decoder.embed_tokens.weight")]
