"""``makd_translation``: fairseq's translation task plus a frozen teacher (summarization is a language pair too).

The task owns the teacher: loaded safely from ``--teacher-path`` on first use (training only; decoding a
student never loads it), checked against the data's dictionaries, frozen (eval mode, no gradients), moved
to the student's device and dtype (half under ``--fp16``). It is not part of the model, so it is never
given to the optimizer, never wrapped by DDP and never saved: resuming reloads it from ``--teacher-path``.
"""

import logging
import os
from dataclasses import dataclass, field

import torch
from fairseq import utils
from fairseq.data import Dictionary, data_utils
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from ..checkpoint import CheckpointError, build_model_from_state, load_checkpoint, model_args
from ..taps import shape_of

logger = logging.getLogger(__name__)


@dataclass
class MakdTranslationConfig(TranslationConfig):
    teacher_path: str = field(
        default="", metadata={"help": "the teacher's fairseq checkpoint; loaded with weights_only on, never saved"}
    )


def first_difference(ours: Dictionary, theirs: Dictionary) -> str:
    """'' if equal, else where the two symbol lists first differ."""
    for i, (a, b) in enumerate(zip(ours.symbols, theirs.symbols)):
        if a != b:
            return f"entry {i}: {a!r} (data) vs {b!r} (teacher)"
    if len(ours) != len(theirs):
        i = min(len(ours), len(theirs))
        extra = ours.symbols[i] if len(ours) > i else theirs.symbols[i]
        return f"sizes {len(ours)} (data) vs {len(theirs)} (teacher), first extra entry {i}: {extra!r}"
    return ""


@register_task("makd_translation", dataclass=MakdTranslationConfig)
class MakdTranslationTask(TranslationTask):
    cfg: MakdTranslationConfig

    def __init__(self, cfg: MakdTranslationConfig, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self._teacher = None
        self.student_shape = None

    @classmethod
    def setup_task(cls, cfg: MakdTranslationConfig, **kwargs):
        missing = [p for p in utils.split_paths(cfg.data) if not os.path.isdir(p)]
        if missing:
            raise FileNotFoundError(f"data directory {missing[0]} does not exist (binarize with fairseq-preprocess)")
        return super().setup_task(cfg, **kwargs)

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        self.student_shape = shape_of(model)  # the criterion sizes its aspect table from it
        return model

    @property
    def teacher(self) -> torch.nn.Module:
        if self._teacher is None:
            self._teacher = self.load_teacher()
        return self._teacher

    def teacher_for(self, student: torch.nn.Module) -> torch.nn.Module:
        """The frozen teacher on the student's device, in the student's floating dtype."""
        p, t = next(student.parameters()), next(self.teacher.parameters())
        if (t.device, t.dtype) != (p.device, p.dtype):
            self._teacher.to(device=p.device, dtype=p.dtype)
        return self._teacher

    def load_teacher(self) -> torch.nn.Module:
        path = self.cfg.teacher_path
        if not path:
            raise ValueError("makd_translation needs --teacher-path (the teacher's fairseq checkpoint)")
        state = load_checkpoint(path)
        self.check_dictionaries(state, path)
        teacher = build_model_from_state(state, task=self)
        for p in teacher.parameters():
            p.requires_grad_(False)
        logger.info(f"teacher {path}: {model_args(state).arch}, "
                    f"{sum(p.numel() for p in teacher.parameters())} parameters, frozen")
        return teacher.eval()

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
