"""README.md and docs/*.md: every command names something that exists and uses only flags its parser accepts.

Commands are collected from the ```bash blocks (one simple command per line, backslash continuations joined);
placeholders (DATA, T.pt, ...) are fine, since only the command's name and its --flags are checked. A makd-* tool is
checked against setup.py's entry point and the --help of the function it names; fairseq-* against fairseq's own
parser built for the command's --user-dir/--task/--arch/--criterion/... (those add the plugin's and the model's
flags, which fairseq's --help does not show); `python3 -m benchmarks.X`, `python3 FILE.py` and `bash FILE`
against the module or file and its --help, run as written. Each parser is read once per test run (cached). Usage synopses (plain ``` blocks that start with a makd-* tool)
are checked the same way. Also: README stays within 300 lines, each of its result tables quotes verbatim the
benchmarks/results/*.md files its lead-in paragraph links (not just any results file), relative links (and their #anchors) resolve.
"""

import contextlib
import functools
import importlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
RESULTS = ROOT / "benchmarks" / "results"

# commands that are not ours or fairseq's: only their presence in a command line is allowed, nothing is checked
OTHER_COMMANDS = {"apt-get", "cp", "mkdir", "sha256sum", "pip", "wait", "cd", "export"}
SHELL_KEYWORDS = {"do", "done", "then", "fi", "else", "time"}
# fairseq flags that decide which other flags exist (the plugin's task/criterion/arch, optimizer, scheduler, ...)
FAIRSEQ_SELECTORS = ("--user-dir", "--task", "--arch", "--criterion", "--optimizer", "--lr-scheduler", "--bpe",
                     "--tokenizer", "--scoring")
FAIRSEQ_PARSERS = {"fairseq-train": "get_training_parser", "fairseq-generate": "get_generation_parser",
                   "fairseq-interactive": "get_interactive_generation_parser", "fairseq-eval-lm": "get_eval_lm_parser",
                   "fairseq-preprocess": "get_preprocessing_parser"}
HELP_TIMEOUT = 300


def fenced_blocks(path):
    """(language, line number of the first content line, lines) of each ``` block of a markdown file."""
    blocks, lang, start, body = [], None, 0, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, start, body = line[3:].strip(), number + 1, []
            else:
                blocks.append((lang, start, body))
                lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, f"{path.name}: a ``` block opened at line {start - 1} is never closed"
    return blocks


def logical_lines(start, lines):
    """Join backslash continuations: (line number, text) of each logical line."""
    joined, first, parts = [], None, []
    for number, line in enumerate(lines, start):
        first = number if first is None else first
        if line.rstrip().endswith("\\"):
            parts.append(line.rstrip()[:-1])
            continue
        parts.append(line)
        joined.append((first, " ".join(parts)))
        first, parts = None, []
    if parts:
        joined.append((first, " ".join(parts)))
    return joined


def simple_commands(text):
    """The simple commands of one shell line, each a list of words (redirections and their targets removed)."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, words, skip_next = [], [], False
    for token in lexer:
        if skip_next:
            skip_next = False
        elif token and set(token) <= set("<>&") and ("<" in token or ">" in token):
            skip_next = True  # the redirection's target (a file or an fd)
        elif token and set(token) <= set(";&|()"):
            commands.append(words)
            words = []
        else:
            words.append(token)
    commands.append(words)
    result = []
    for words in commands:
        if words[:1] == ["for"]:
            continue  # `for i in 0 1`: the loop header
        while words and (words[0] in SHELL_KEYWORDS or re.match(r"^[A-Za-z_]\w*=", words[0])):
            words = words[1:]  # keywords and environment assignments (REUSE=DIR bash ...)
        if words:
            result.append(words)
    return result


def collect_commands():
    found = []
    for path in DOCS:
        for lang, start, lines in fenced_blocks(path):
            if lang == "bash":
                for number, text in logical_lines(start, lines):
                    for words in simple_commands(text):
                        found.append((f"{path.relative_to(ROOT)}:{number}", words))
            elif lang in ("", "text") and lines and lines[0].startswith("makd-"):
                # a usage synopsis: `makd-init --teacher T.pt (--rank N | ...) [--force]`
                words = [lines[0].split()[0], *re.findall(r"(?<![\w-])--[A-Za-z0-9][\w-]*", " ".join(lines))]
                found.append((f"{path.relative_to(ROOT)}:{start} (usage)", words))
    return found


COMMANDS = collect_commands()


def flags_of(words):
    """The --flags a command line uses (a quoted value such as "--lr 1e-4" is a value, not a flag)."""
    return sorted({w.split("=", 1)[0] for w in words[1:] if w.startswith("--") and not re.search(r"\s", w)})


def option_strings(help_text):
    """The option strings an argparse --help lists (the first column of its option lines)."""
    options = set()
    for line in help_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("-"):
            head = re.split(r"\s{2,}", stripped, maxsplit=1)[0]
            options.update(re.findall(r"(?<![\w-])--?[A-Za-z0-9][\w-]*", head))
    return options


HELP_RUNNER = """
import contextlib, io, json, runpy, sys
results = {}
for kind, target, verb in json.loads(sys.argv[1]):
    out = io.StringIO()
    sys.argv = [target, *([verb] if verb else []), "--help"]
    try:
        with contextlib.redirect_stdout(out):
            if kind == "module":
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(target, run_name="__main__")
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    except BaseException as error:
        code = repr(error)
    results[" ".join([kind, target, verb]).strip()] = [code, out.getvalue()]
print(json.dumps(results))
"""


@functools.lru_cache(maxsize=None)
def python_helps():
    """--help of every `python3 -m MODULE` and `python3 FILE.py` in the documents, run as `python3 -m`/`python3 FILE`
    runs them (runpy, from the repository root), all in one process: one import of torch and fairseq, not one each."""
    targets = set()
    for _, words in COMMANDS:
        if words[0] in ("python3", "python") and len(words) > 1:
            if words[1] == "-m" and words[2].startswith("benchmarks."):
                targets.add(("module", words[2], ""))
                if len(words) > 3 and re.fullmatch(r"[a-z][a-z_-]*", words[3]):  # maybe a subcommand (``verbs``)
                    targets.add(("module", words[2], words[3]))
            elif words[1].endswith(".py") and (ROOT / words[1]).is_file():
                targets.add(("file", words[1], ""))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", COLUMNS="200")
    proc = subprocess.run([sys.executable, "-c", HELP_RUNNER, json.dumps(sorted(targets))], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=HELP_TIMEOUT)
    assert proc.returncode == 0, f"the --help runner exited {proc.returncode}\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.splitlines()[-1])


def python_help(kind, target, verb=""):
    code, out = python_helps()[" ".join([kind, target, verb]).strip()]
    assert code == 0, f"python3 {'-m ' if kind == 'module' else ''}{target} {verb} --help: exit {code}"
    return out


@functools.lru_cache(maxsize=None)
def entry_points():
    """console_scripts of setup.py: {name: (module, function)}."""
    text = (ROOT / "setup.py").read_text()
    return {name: (module, function)
            for name, module, function in re.findall(r"[\"'](makd-[\w-]+)\s*=\s*([\w.]+):(\w+)[\"']", text)}


@functools.lru_cache(maxsize=None)
def makd_options(name):
    """The options of a makd-* tool: the --help of the function setup.py's entry point names (in-process)."""
    assert name in entry_points(), f"{name} is not an entry point in setup.py (known: {sorted(entry_points())})"
    module, function = entry_points()[name]
    out, code = io.StringIO(), "no exit"
    try:
        with contextlib.redirect_stdout(out):
            getattr(importlib.import_module(module), function)(["--help"])
    except SystemExit as exit_:
        code = exit_.code or 0
    assert code == 0, f"{name} --help: exit {code}"
    return option_strings(out.getvalue())


@functools.lru_cache(maxsize=None)
def fairseq_options(tool, selectors):
    """Every option fairseq's parser for `tool` has once the command's task, arch, criterion, ... are chosen.

    fairseq adds those components' flags only while parsing (parse_args_and_arch), after --help has printed,
    so the parser is built as fairseq builds it and its option strings are read.
    """
    from fairseq import options

    assert tool in FAIRSEQ_PARSERS, f"{tool}: not a fairseq command test_docs.py knows"
    parser = getattr(options, FAIRSEQ_PARSERS[tool])()
    if tool != "fairseq-preprocess":
        options.parse_args_and_arch(parser, input_args=["DATA", *selectors], parse_known=True)
    return set(parser._option_string_actions)


def fairseq_selectors(words):
    selectors = []
    for i, word in enumerate(words[:-1]):
        if word in FAIRSEQ_SELECTORS and not words[i + 1].startswith("-"):
            value = words[i + 1]
            if word == "--user-dir" and not os.path.isabs(value):
                assert (ROOT / value).is_dir(), f"--user-dir {value}: no such directory in the repository"
                value = str(ROOT / value)
            selectors += [word, value]
    return tuple(selectors)


def verbs(help_text):
    """The subcommands an argparse --help offers (``{replay,score}`` in its usage), or none."""
    usage = help_text.split("\n\n")[0]
    return {verb for group in re.findall(r"\{([a-z_,-]+)\}", usage) for verb in group.split(",")}


def python_options(words):
    """`python3 -m MODULE ...` or `python3 FILE.py ...`: the module or file exists; its options."""
    args = words[1:]
    if args[:1] == ["-m"]:
        module = args[1]
        if module == "pytest":
            paths = [arg for arg in args[2:] if not arg.startswith("-") and ("/" in arg or arg.startswith("test"))]
            missing = [path for path in paths if not (ROOT / path.split("::")[0]).exists()]
            assert paths and not missing, f"pytest: {missing or 'no test path'}"
            assert not flags_of(words), "pytest --flags are not checked here: use short options or check them"
            return set()
        assert module.startswith("benchmarks."), f"python3 -m {module}: only benchmarks.* modules are checked"
        relative = Path(*module.split("."))
        assert (ROOT / relative.with_suffix(".py")).is_file() or (ROOT / relative / "__main__.py").is_file(), \
            f"python3 -m {module}: no {relative}.py in the repository"
        verb = args[2] if len(args) > 2 and args[2] in verbs(python_help("module", module)) else ""
        return option_strings(python_help("module", module, verb))  # a subcommand's own options
    script = args[0]
    assert script.endswith(".py") and (ROOT / script).is_file(), f"python3 {script}: no such file in the repository"
    return option_strings(python_help("file", script))


def check(words):
    name = words[0]
    if name.startswith("makd-"):
        accepted = makd_options(name)
    elif name.startswith("fairseq-"):
        assert shutil.which(name), f"{name} is not installed"
        accepted = fairseq_options(name, fairseq_selectors(words))
    elif name in ("python3", "python"):
        accepted = python_options(words)
    elif name == "bash":
        assert (ROOT / words[1]).is_file(), f"bash {words[1]}: no such file in the repository"
        return
    else:
        assert name in OTHER_COMMANDS, (f"{name}: test_docs.py does not know this command; check it here or add it "
                                        "to OTHER_COMMANDS")
        return
    unknown = [flag for flag in flags_of(words) if flag not in accepted]
    assert not unknown, f"{' '.join(words[:3])} ...: {unknown} not accepted by its parser"


@pytest.mark.parametrize("where,words", COMMANDS, ids=[f"{where} {words[0]}" for where, words in COMMANDS])
def test_documented_command_exists_and_uses_only_accepted_flags(where, words):
    check(words)


def test_documents_hold_the_four_commands():
    names = {words[0] for _, words in COMMANDS}
    assert {"makd-compress", "makd-init", "fairseq-train", "fairseq-generate", "makd-score", "makd-shrink",
            "makd-teacher-data", "bash", "python3"} <= names
    assert len(COMMANDS) >= 30


def test_flag_check_refuses_a_flag_the_parser_does_not_have():
    # the check itself: a misspelt flag of a makd tool and of the plugin's criterion must fail
    with pytest.raises(AssertionError, match="--param-budjet"):
        check(["makd-init", "--teacher", "T.pt", "--param-budjet", "0.5", "--out", "S.pt"])
    with pytest.raises(AssertionError, match="--kd-temprature"):
        check(["fairseq-train", "DATA", "--user-dir", "makd_fairseq", "--task", "makd_translation", "--criterion",
               "makd", "--arch", "lowrank_transformer", "--kd-temprature", "2"])
    with pytest.raises(AssertionError, match="--partal"):
        check(["python3", "-m", "benchmarks.quality", "--task", "summarization", "--partal"])
    # a subcommand's flags are its own: score has --max-k, replay has not (both documented)
    check(["python3", "-m", "benchmarks.averaging", "score", "W", "--task", "summarization", "--max-k", "3"])
    with pytest.raises(AssertionError, match="--max-k"):
        check(["python3", "-m", "benchmarks.averaging", "replay", "S", "W", "--max-k", "3"])
    with pytest.raises(AssertionError, match="no benchmarks/nonexistent.py"):
        check(["python3", "-m", "benchmarks.nonexistent", "--help"])
    with pytest.raises(AssertionError, match="does not know this command"):
        check(["makd_init", "--teacher", "T.pt"])


def test_readme_is_at_most_300_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_starts_with_the_command_ci_runs():
    first = fenced_blocks(README)[0][2]
    assert any(line.startswith("python3 -m pytest -q tests ") for line in first), first
    assert "python3 -m pytest -q tests" in (ROOT / ".ci" / "run").read_text()


def tables_with_sources(path):
    """Each markdown table of a file, as (first line number, data cells, the benchmarks/results/*.md files its lead-in
    paragraph, the text right above it, links)."""
    lines, tables, previous = path.read_text().splitlines(), [], ""
    for number, line in enumerate(lines):
        if line.startswith("|") and not previous.startswith("|"):
            end = number
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            above = number - 1
            while above >= 0 and not lines[above].strip():
                above -= 1
            start = above
            while start >= 0 and lines[start].strip():
                start -= 1
            lead = " ".join(lines[start + 1:above + 1])
            sources = [path.parent / target for target in re.findall(r"\]\((benchmarks/results/[^)\s#]+\.md)", lead)]
            cells = [cell.strip() for row in lines[number + 1:end] if not re.match(r"^\|[-| :]+\|$", row)
                     for cell in row.strip().strip("|").split("|")]
            tables.append((number + 1, cells, sources))
        previous = line
    return tables


def test_readme_result_tables_quote_the_results_files_verbatim():
    tables = tables_with_sources(README)
    assert any(re.search(r"\d", cell) for _, cells, _ in tables for cell in cells), "README has no results table"
    for line, cells, sources in tables:
        numeric = [cell for cell in cells if re.search(r"\d", cell)]
        if not numeric:
            continue
        # a table quotes the results files its lead-in paragraph links, not any results file
        assert sources, f"README table at line {line}: its lead-in paragraph links no benchmarks/results/*.md"
        results = "\n".join(source.read_text() for source in sources)
        missing = [cell for cell in numeric if f"| {cell} |" not in results]
        assert not missing, f"README table at line {line}: cells not in {[str(s.relative_to(ROOT)) for s in sources]}: {missing}"


def heading_anchors(path):
    """GitHub's anchors for the headings of a markdown file."""
    anchors, seen = set(), {}
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(r"^#{1,6} ", line):
            slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def links(path):
    text, in_code, found = path.read_text().splitlines(), False, []
    for number, line in enumerate(text, 1):
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code:
            found += [(number, target) for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", line)]
    return found


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_relative_links_resolve(path):
    broken = []
    for number, target in links(path):
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        file, _, anchor = target.partition("#")
        destination = (path.parent / file).resolve() if file else path
        if not destination.exists():
            broken.append(f"line {number}: {target} (no {destination})")
        elif anchor and destination.suffix == ".md" and anchor not in heading_anchors(destination):
            broken.append(f"line {number}: {target} (no heading #{anchor} in {destination.name})")
    assert not broken, "\n".join(broken)


def test_every_doc_is_linked_from_readme():
    targets = {(README.parent / t.partition("#")[0]).resolve() for _, t in links(README)}
    assert set(DOCS[1:]) <= targets, sorted(str(p) for p in set(DOCS[1:]) - targets)
