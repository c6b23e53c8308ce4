"""The quality and speed benchmarks of makd-fairseq: loops over the pipeline users run (init -> distill -> generate
-> score), as modules the scripts share. Run a script from the repository root as a module::

    python3 -m benchmarks.quality --help      # students of every method against their teacher (quality.sh: all tasks)
    python3 -m benchmarks.speed --help        # cost per update, generation speed and FLOPs
    python3 -m benchmarks.sweep --help        # the distillation defaults, chosen on validation
    python3 -m benchmarks.compare A.json B.json   # two quality runs side by side
    python3 -m benchmarks.rescore A.json      # a results file's intervals again, over test items and seeds
    python3 -m benchmarks.diagnosis A.json    # validation curves of --validation-only runs (diagnose.sh: issue 34)
    python3 -m benchmarks.train_teacher --help    # a benchmark teacher alone
    python3 -m benchmarks.carry --help        # trainings begun on another machine (a lent GPU), carried by tar

The modules: ``sizes`` (model and training presets), ``runner`` (a run's work directory and its stages),
``commands`` (the fairseq / makd commands a run starts), ``scoring`` (metrics of kept outputs), ``archive`` (the
hypotheses kept xz-compressed, and taking them over with ``--reuse``), ``records`` (what a result file says of each
model), ``lm`` (greedy continuations of a language model), ``measure`` and ``shapes`` (the speed benchmark's timed
workers and preset shapes), ``report`` (tables and plots), ``diagnosis`` (curves read three ways), ``provenance`` (machine and command of a result).
"""

import os

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")  # the committed results
