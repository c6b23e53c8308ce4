"""``makd_translation``: fairseq's translation task plus a frozen teacher (summarization is a language pair too).

The teacher's life cycle is ``TeacherMixin``'s (see ``tasks/teacher.py``); this task adds the check that the
teacher was trained on the data's source and target dictionaries. A resume keeps ``--patience``'s state
(``tasks/patience.py``). ``--eval-metric bleu|chrf|rougeL`` validates on the task's metric by generation as well
(``validation.py``), for ``--best-checkpoint-metric`` and ``--patience`` to choose and stop on. Its generators keep
encoder states once per source sentence (``generation.py``; ``--encoder-states-per-beam`` for fairseq's own way).
Without ``--teacher-path`` (no teacher is loaded) it trains as fairseq's translation task does, update for update,
with the resumable ``--patience``: the benchmarks train their teachers in it (``benchmarks/sizes.py``).
"""

import os
from dataclasses import dataclass, field
from typing import Optional

from fairseq.data import data_utils
from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from ..generation import PerSentenceGeneratorMixin
from ..validation import EVAL_METRICS, MetricValidationMixin
from .patience import PatienceStateMixin
from .teacher import TeacherMixin, check_data_dirs, teacher_path_field


@dataclass
class MakdTranslationConfig(TranslationConfig):
    teacher_path: str = teacher_path_field()
    eval_metric: ChoiceEnum(EVAL_METRICS) = field(default="none", metadata={
        "help": "also validate on this metric of beam-search hypotheses (makd-score's, logged as valid_<metric>), "
                "e.g. for --best-checkpoint-metric bleu --maximize-best-checkpoint-metric; none: nll only"})
    eval_metric_args: str = field(default='{"beam": 4}', metadata={
        "help": "generation args for --eval-metric as JSON (fairseq-generate's names: beam, max_len_a, max_len_b, "
                "lenpen, ...)"})
    eval_metric_remove_bpe: Optional[str] = field(default=None, metadata={
        "help": "--eval-metric scores text with this BPE removed (fairseq-generate's --remove-bpe, e.g. "
                "sentencepiece)"})
    encoder_states_per_beam: bool = field(default=False, metadata={
        "help": "beam search as fairseq does it: the encoder output and the cross-attention keys and values copied "
                "for every beam and reordered at every step (default: once per source sentence, the same "
                "hypotheses; see makd_fairseq/generation.py)"})
    fairseq_decoder_step: bool = field(default=False, metadata={
        "help": "decode each step with fairseq's TransformerDecoder (its modules and incremental-state dictionaries) "
                "instead of the plugin's lean step (plain products, preallocated caches; the same hypotheses; see "
                "makd_fairseq/lean_step.py)"})


@register_task("makd_translation", dataclass=MakdTranslationConfig)
class MakdTranslationTask(PerSentenceGeneratorMixin, MetricValidationMixin, PatienceStateMixin, TeacherMixin, TranslationTask):
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
