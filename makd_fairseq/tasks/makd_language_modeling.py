"""``makd_language_modeling``: fairseq's language_modeling task plus a frozen teacher (see ``tasks/teacher.py``).

The teacher must have been trained on the data's ``dict.txt``. A resume keeps ``--patience``'s state
(``tasks/patience.py``). Use ``--sample-break-mode complete`` (or
``none``/``complete_doc``): fairseq's ``eos`` mode calls ``np.compat``, which numpy 2 removed.
"""

from dataclasses import dataclass

from fairseq.tasks import register_task
from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask

from .patience import PatienceStateMixin
from .teacher import TeacherMixin, check_data_dirs, teacher_path_field


@dataclass
class MakdLanguageModelingConfig(LanguageModelingConfig):
    teacher_path: str = teacher_path_field()


@register_task("makd_language_modeling", dataclass=MakdLanguageModelingConfig)
class MakdLanguageModelingTask(PatienceStateMixin, TeacherMixin, LanguageModelingTask):

    @classmethod
    def setup_task(cls, args, **kwargs):
        check_data_dirs(args.data)
        return super().setup_task(args, **kwargs)

    def teacher_dictionaries(self, tcfg, tdata: str):
        return [("", "dict.txt", self.dictionary, "decoder.embed_tokens.weight")]
