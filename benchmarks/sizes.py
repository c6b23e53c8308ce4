"""Named model and training sizes shared by the benchmark scripts (one place to change them).

``smoke`` runs in seconds inside the test suite; ``cpu`` fits a 2-core machine; ``speed`` is wide enough
(d=256) that generation time is spent in matrix products rather than Python overhead; ``gpu`` is a full-size
Transformer-base teacher.
"""

from makd_fairseq.compress import FULL_RACE as FULL
from makd_fairseq.compress import METHODS as DISTILL_METHODS
from makd_fairseq.lowrank import DEFAULT_TARGETS, VOCABULARY_TARGETS
from makd_fairseq.student import OPTIMIZATION  # optimisation shared by teachers and students

TEACHER_ARCH = {
    "smoke": ["--arch", "transformer", "--encoder-layers", "2", "--decoder-layers", "2",
              "--encoder-embed-dim", "64", "--decoder-embed-dim", "64",
              "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128",
              "--encoder-attention-heads", "4", "--decoder-attention-heads", "4", "--share-all-embeddings"],
    "cpu": ["--arch", "transformer", "--encoder-layers", "3", "--decoder-layers", "3",
            "--encoder-embed-dim", "128", "--decoder-embed-dim", "128",
            "--encoder-ffn-embed-dim", "512", "--decoder-ffn-embed-dim", "512",
            "--encoder-attention-heads", "4", "--decoder-attention-heads", "4", "--share-all-embeddings"],
    "speed": ["--arch", "transformer", "--encoder-layers", "3", "--decoder-layers", "3",
              "--encoder-embed-dim", "256", "--decoder-embed-dim", "256",
              "--encoder-ffn-embed-dim", "1024", "--decoder-ffn-embed-dim", "1024",
              "--encoder-attention-heads", "4", "--decoder-attention-heads", "4", "--share-all-embeddings"],
    "gpu": ["--arch", "transformer", "--share-all-embeddings"],  # Transformer-base: 6+6, d=512
    # IWSLT'14 de-en as in fairseq's examples/translation (separate dictionaries: tie only the decoder's)
    "iwslt": ["--arch", "transformer_iwslt_de_en", "--share-decoder-input-output-embed"],
}

# summarization sources are truncated to 256 pieces
TRAIN_COMMON = OPTIMIZATION + [
    "--truncate-source", "--max-source-positions", "256", "--skip-invalid-size-inputs-valid-test"]


def until_converged(cap, every, patience):
    """The stopping rule of teachers and students: validate every ``every`` updates (and only then, so ``--patience``
    counts equal intervals), stop after ``patience`` validations without a lower validation loss (students: nll,
    ``--best-checkpoint-metric nll_loss``), at most ``cap`` updates."""
    return ["--max-update", str(cap), "--validate-interval-updates", str(every), "--save-interval-updates", str(every),
            "--validate-interval", "1000000", "--patience", str(patience)]


TEACHER_TRAIN = {
    "smoke": ["--lr", "0.005", "--max-tokens", "2048", "--max-update", "20", "--cpu"],
    # trained to convergence: a teacher stopped at 2,500 updates was still falling fast (summarization valid nll 5.30
    # at 1,380, 4.70 at 2,500) and a 50% student trained 3,000 updates more passed it (ROUGE-L 20.3 vs 17.9)
    "cpu": ["--lr", "0.002", "--max-tokens", "6000", *until_converged(15000, 250, 4), "--keep-interval-updates", "1",
            "--cpu"],
    "speed": ["--lr", "0.002", "--max-tokens", "4096", "--max-update", "600", "--cpu"],
    "gpu": ["--lr", "0.0007", "--max-tokens", "8192", "--max-update", "30000", "--fp16",
            "--warmup-updates", "4000"],
    "iwslt": ["--lr", "0.0005", "--max-tokens", "4096", "--max-update", "60000", "--warmup-updates", "4000",
              "--dropout", "0.3", "--fp16"],
}

# the distillation methods, as criterion flags on the makd_translation task (the SVD student is the same)
METHODS = {
    **DISTILL_METHODS,  # ce, word_kd (its swept settings), makd (the criterion's defaults): what makd-compress offers
    "layer_kd": ["--criterion", "makd", "--matrix-weight", "0", "--layer-layers", "all"],
}


# quality benchmark: every student method trains with the same flags, stopping rule and seed on top of TRAIN_COMMON
STUDENT_TRAIN = {
    "smoke": ["--lr", "0.0005", "--max-tokens", "2048", *until_converged(4, 2, 2), "--cpu"],
    "cpu": ["--lr", "0.0005", "--max-tokens", "4000", *until_converged(3000, 100, 3), "--cpu"],
    "gpu": ["--lr", "0.0003", "--max-tokens", "8192", *until_converged(20000, 2000, 3), "--fp16"],
    "iwslt": ["--lr", "0.0005", "--max-tokens", "4096", "--warmup-updates", "4000", "--dropout", "0.3",
              *until_converged(20000, 2000, 3), "--fp16"],
    # a BART-base teacher fine-tuned by the user (fairseq's examples/bart summarization recipe): its lr and batch
    "bart": ["--lr", "3e-05", "--max-tokens", "2048", "--update-freq", "4", "--warmup-updates", "500",
             "--max-source-positions", "1024", "--max-target-positions", "1024", *until_converged(20000, 2000, 3),
             "--fp16"],
}

# decoder-only teachers (language_modeling): fairseq's LM defaults keep input/output widths at 512, so set them
LM_ARCH = {
    "lm_smoke": ["--arch", "transformer_lm", "--decoder-layers", "2", "--decoder-embed-dim", "64",
                 "--decoder-input-dim", "64", "--decoder-output-dim", "64", "--decoder-ffn-embed-dim", "128",
                 "--decoder-attention-heads", "4", "--share-decoder-input-output-embed"],
    "lm_cpu": ["--arch", "transformer_lm", "--decoder-layers", "3", "--decoder-embed-dim", "128",
               "--decoder-input-dim", "128", "--decoder-output-dim", "128", "--decoder-ffn-embed-dim", "512",
               "--decoder-attention-heads", "4", "--share-decoder-input-output-embed"],
}
# whole descriptions packed into blocks ("eos" mode calls np.compat, gone in numpy 2)
LM_COMMON = OPTIMIZATION + [
    "--tokens-per-sample", "256", "--sample-break-mode", "complete", "--skip-invalid-size-inputs-valid-test"]
TEACHER_ARCH.update(LM_ARCH)
TEACHER_TRAIN.update({
    "lm_smoke": ["--lr", "0.005", "--max-tokens", "2048", "--max-update", "20", "--cpu"],
    "lm_cpu": ["--lr", "0.002", "--max-tokens", "6000", *until_converged(15000, 250, 4), "--keep-interval-updates",
               "1", "--cpu"],
})
STUDENT_TRAIN.update({
    "lm_smoke": STUDENT_TRAIN["smoke"],
    "lm_cpu": STUDENT_TRAIN["cpu"],
})


def is_lm_size(size):
    return size in LM_ARCH


def common_flags(size):
    """Data and optimisation flags shared by a size's teacher and students."""
    return LM_COMMON if is_lm_size(size) else TRAIN_COMMON


def teacher_criterion(size):
    # our tasks without --teacher-path are fairseq's (the same updates) plus --patience's state in the checkpoint
    # (makd_fairseq/tasks/patience.py): a teacher interrupted and resumed stops where an uninterrupted one would
    if is_lm_size(size):
        return ["--task", "makd_language_modeling", "--criterion", "cross_entropy"]
    return ["--task", "makd_translation", "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"]


# the methods of the quality benchmark: (initial student, criterion flags); teacher and svd_only are not trained
QUALITY_METHODS = {
    "teacher": None,
    "svd_only": ("svd", None),
    "svd_ce": ("svd", METHODS["ce"]),
    "svd_word_kd": ("svd", METHODS["word_kd"]),
    "svd_layer_kd": ("svd", METHODS["layer_kd"]),
    "makd": ("svd", METHODS["makd"]),
    "dense_sft_kd": ("dense", METHODS["word_kd"]),
    "svd_seq_kd": ("svd", METHODS["ce"]),
    "makd_seq_kd": ("svd", METHODS["makd"]),
    "makd_vocab": ("vocab", METHODS["makd"]),  # the vocabulary matrix factorized too (issue 15), same budget
}
# issue 34's diagnosis, on validation only (benchmarks.quality --validation-only, benchmarks/diagnose.sh): variants
# of the KD target and of the aspects, each from the same whitened student as the methods above; not in the default set
WORD_KD_T1 = DISTILL_METHODS["word_kd"]  # word_kd since the diagnosis chose it; the name its curves were kept under
DIAGNOSIS_METHODS = {
    "word_kd_t1": ("svd", WORD_KD_T1),  # T 1, CE + KL: the teacher was trained with label smoothing (arXiv 2206.14532)
    "kd_alpha_0.1": ("svd", [*WORD_KD_T1, "--kd-alpha", "0.1"]),  # convex (1 - a)·CE + a·KD, fairseq's form
    "kd_alpha_0.5": ("svd", [*WORD_KD_T1, "--kd-alpha", "0.5"]),
    "kd_top8": ("svd", [*WORD_KD_T1, "--kd-topk", "8"]),  # the teacher's 8 most likely tokens, renormalized
    "kd_select_0.5": ("svd", [*WORD_KD_T1, "--kd-select-ratio", "0.5"]),  # the hardest half of the tokens (2105.12967)
    "makd_no_matrix": ("svd", [*METHODS["makd"], "--matrix-weight", "0"]),
    "makd_no_layer": ("svd", [*METHODS["makd"], "--layer-weight", "0"]),
    "makd_no_model": ("svd", [*METHODS["makd"], "--model-weight", "0"]),
    # the intermediate terms linearly to 0 by half the standard cap (in case they help early and hurt late)
    "makd_anneal": ("svd", [*METHODS["makd"], "--anneal-updates", "1500"]),
    # the intermediate terms at 0.3 throughout (the en→de half of the old sweep preferred it; makd minus them,
    # word_kd_t1, is 1.4 BLEU ahead of makd on validation)
    "makd_aspects_0.3": ("svd", [*METHODS["makd"], "--matrix-weight", "0.3", "--layer-weight", "0.3"]),
}
# every method a run can name: (initial student, criterion flags)
ALL_METHODS = {**QUALITY_METHODS, **DIAGNOSIS_METHODS}
# methods a run derives from two it trains, training nothing itself: a method raced against plain fine-tuning on the
# validation metric, as makd-compress races it; per seed, the winner's student (after a short race makd-compress
# continues the winner from its race checkpoint: the same training, fairseq's patience counter aside). (method,
# baseline, length): length None for the short race (compress.default_race: 1,000 of 15,000 updates), FULL (--race
# full) for a race over the whole trainings (each racer to its own stop, the better best validation kept).
# word_kd_race_full is makd-compress's default recipe (--method word_kd, --race full: docs/benchmarks.md's race-length
# rule); word_kd_race the short race, the default until that rule was decided; makd_race the short race of
# --method makd, the default before issue 34's diagnosis.
RACES = {"word_kd_race": ("svd_word_kd", "svd_ce", None), "makd_race": ("makd", "svd_ce", None),
         "word_kd_race_full": ("svd_word_kd", "svd_ce", FULL)}
# how each kind of initial student is made: (tool, flags); "svd" and "vocab" also take benchmarks.quality's --init
STUDENT_KINDS = {
    "svd": ("makd-init", []),
    "vocab": ("makd-init", ["--targets", ",".join(DEFAULT_TARGETS + VOCABULARY_TARGETS)]),
    "dense": ("makd-shrink", []),
}
# sequence-level KD (Kim & Rush 2016): these train on the teacher's beam outputs (makd-teacher-data), not the
# references; validation stays on the original valid split. Encoder-decoder teachers only.
SEQ_KD_METHODS = ("svd_seq_kd", "makd_seq_kd")

# beam search on the test set; summaries are one line, translations follow the source's length
GENERATE = {
    "summarization": ["--beam", "4", "--max-len-a", "0", "--max-len-b", "64"],
    "translation": ["--beam", "4", "--max-len-a", "1.5", "--max-len-b", "10"],
}
