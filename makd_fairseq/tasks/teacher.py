"""The teacher a distillation task owns (``makd_translation``, ``makd_language_modeling``).

Loaded safely from ``--teacher-path`` on first use (training only; decoding a student never loads it), checked
against the data's dictionaries (``TeacherMixin.check_dictionaries`` over the sides each task lists in
``teacher_dictionaries``), frozen (eval mode, no gradients), moved to
the student's device and dtype (half under ``--fp16``). It is not part of the model, so it is never given to the
optimizer, never wrapped by DDP and never saved: resuming reloads it from ``--teacher-path``.
"""

import logging
import os
from dataclasses import field

import torch
from fairseq import utils
from fairseq.data import Dictionary

from ..checkpoint import CheckpointError, build_model_from_state, load_checkpoint, model_args
from ..taps import shape_of

logger = logging.getLogger(__name__)


def teacher_path_field():
    return field(default="", metadata={
        "help": "the teacher's fairseq checkpoint; loaded with weights_only on, never saved"})


def check_data_dirs(data: str) -> None:
    missing = [p for p in utils.split_paths(data) if not os.path.isdir(p)]
    if missing:
        raise FileNotFoundError(f"data directory {missing[0]} does not exist (binarize with fairseq-preprocess)")


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


class TeacherMixin:
    """Gives a fairseq task a frozen teacher (``teacher``, ``teacher_for``), the student's shape, and the criterion the
    update count (``train_step``)."""

    _teacher = None
    # the shape of the student this task built (fairseq-train builds the model, then the criterion): handed to the
    # criterion by ``MakdCriterion.build_criterion``, which refuses to start without it
    student_shape = None

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        self.student_shape = shape_of(model)
        return model

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **kwargs):
        # the criterion's schedule (--anneal-updates) follows fairseq's update count, which only the task is given;
        # validation then uses the last update's
        if hasattr(criterion, "set_num_updates"):  # fairseq's DDP wrapper forwards the attribute
            criterion.set_num_updates(update_num)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad, **kwargs)

    @property
    def task_config(self):
        return getattr(self, "cfg", None) or self.args  # legacy tasks (language_modeling) keep theirs as ``args``

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
        cfg = self.task_config
        path = cfg.teacher_path
        if not path:
            raise ValueError(f"{getattr(cfg, '_name', None) or 'the task'} needs --teacher-path "
                             "(the teacher's fairseq checkpoint)")
        state = load_checkpoint(path)
        self.check_dictionaries(state, path)
        teacher = build_model_from_state(state, task=self)
        for p in teacher.parameters():
            p.requires_grad_(False)
        logger.info(f"teacher {path}: {model_args(state).arch}, "
                    f"{sum(p.numel() for p in teacher.parameters())} parameters, frozen")
        return teacher.eval()

    def check_dictionaries(self, state: dict, path: str) -> None:
        """The teacher must have been trained on this vocabulary: compare symbols where its dictionaries are still
        on disk, else at least the embedding sizes."""
        tcfg = state["cfg"]["task"] if state.get("cfg") is not None else model_args(state)
        tdata = str(getattr(tcfg, "data", "") or "").split(os.pathsep)[0]
        data = self.task_config.data
        for side, dict_name, ours, embedding in self.teacher_dictionaries(tcfg, tdata):
            rows = state["model"][embedding].size(0)
            dict_path = os.path.join(tdata, dict_name)
            if tdata and os.path.isfile(dict_path):
                diff = first_difference(ours, Dictionary.load(dict_path))
                if diff:
                    raise CheckpointError(f"teacher {path}: its {side}dictionary ({dict_path}) differs from the "
                                          f"data's ({data}): {diff}")
            elif rows != len(ours):
                raise CheckpointError(f"teacher {path}: its {side}embedding has {rows} rows but the data's "
                                      f"{side}dictionary has {len(ours)} entries")
            else:
                logger.warning(f"teacher dictionary {dict_path} not found: checked sizes only")

    def teacher_dictionaries(self, tcfg, tdata: str):
        """(side label, the teacher's dictionary file name in ``tdata``, our dictionary, embedding key) per side."""
        raise NotImplementedError
