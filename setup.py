from setuptools import find_packages, setup

setup(
    name="makd-fairseq",
    version="0.1.0",
    description="Low-rank students for fairseq seq2seq Transformers with Multi-aspect Knowledge Distillation",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["makd_fairseq", "makd_fairseq.*"]),
    install_requires=[
        # on Python 3.11 upstream fairseq 0.12.2 does not install; fairseq-fixed is fairseq main
        "fairseq-fixed==0.12.3.1; python_version >= '3.11'",
        "fairseq>=0.12.2; python_version < '3.11'",
        "torch>=2.0",
        "hydra-core>=1.0.7",
        "omegaconf>=2.0.6",
        "sentencepiece",
        "sacrebleu>=2.0",
        "rouge-score",
        "tabulate",
        "lz4",
        "datasketch>=1.5",  # MinHash LSH: near-duplicate grouping in prepare.py
        "matplotlib",
        "tensorboardX",  # fairseq-train --tensorboard-logdir; without it fairseq prints a notice at every import
    ],
    extras_require={"test": ["pytest>=7", "pytest-xdist>=3.6,<4"],
                    # the speed benchmark's anchor: the teacher served by CTranslate2
                    "benchmarks": ["ctranslate2>=4.8,<5"]},
    entry_points={"console_scripts": ["makd-init = makd_fairseq.cli.init:main",
                                      "makd-shrink = makd_fairseq.cli.shrink:main",
                                      "makd-teacher-data = makd_fairseq.cli.teacher_data:main",
                                      "makd-score = makd_fairseq.cli.score:main",
                                      "makd-compress = makd_fairseq.cli.compress:main"]},
)
