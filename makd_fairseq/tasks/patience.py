"""``--patience`` survives a resume: a distillation stopped and resumed from ``checkpoint_last.pt`` stops early
at the update where an uninterrupted one would.

fairseq keeps early stopping's state (the best validation value so far and how many validations since it) as
attributes of ``fairseq_cli.train.should_stop_early``, and checkpoints only ``save_checkpoint.best``: on resume the
count starts at zero and the first validation becomes the new best even when it is worse, so a resumed training
runs on for at least ``--patience`` more validations. fairseq's task checkpoint API (``get_checkpoint_dict`` into
the checkpoint's ``extra_state``, ``set_checkpoint_dict`` back when the dataloader state is restored, i.e. on a
resume and never on ``--finetune-from-model``'s first start) carries that state for our tasks.
"""

import logging
import sys

logger = logging.getLogger(__name__)


def should_stop_early_fn():
    """The function whose attributes hold the state (``python -m fairseq_cli.train`` runs it as ``__main__``)."""
    main = sys.modules.get("__main__")
    if callable(getattr(main, "should_stop_early", None)):
        return main.should_stop_early
    from fairseq_cli.train import should_stop_early
    return should_stop_early


class PatienceStateMixin:
    """Saves and restores early stopping's state with the checkpoint (fairseq's task checkpoint API)."""

    def get_checkpoint_dict(self):
        fn = should_stop_early_fn()
        best = getattr(fn, "best", None)
        state = {"best": None if best is None else float(best), "num_runs": int(getattr(fn, "num_runs", 0))}
        return {type(self).__name__: {"patience": state}}

    def set_checkpoint_dict(self, checkpoint_dict):
        state = checkpoint_dict.get("patience")
        if not state or state["best"] is None:
            return
        fn = should_stop_early_fn()
        fn.best, fn.num_runs = state["best"], state["num_runs"]
        logger.info(f"--patience resumes: best validation {state['best']:.4f}, "
                    f"{state['num_runs']} validation(s) since without improvement")
