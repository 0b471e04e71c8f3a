"""README.md and docs/*.md: every command they show parses, the README stays short and navigable, links resolve.

Commands are checked at --help level: for every `mindrun ...` (or `.venv/bin/mindrun`, `python -m trainer`,
`python -m launcher`) line in a fenced block or an inline code span, every `--flag` shown must exist for its
subcommand (`--x_y` and `--x-y` are the same flag: every subcommand accepts both). Syntax summaries are read the
same way (`[--out DIR]`, `(--prompt TEXT | --prompt-ids IDS)`, `inspect DIR | merge DIR OUT`). In a `mindrun
launch` command the options after `-m trainer train` are `train`'s; those after a script or another `-m MODULE`
belong to that program and are not checked. Nothing is run: the parsers are built and their option strings read.
"""
import argparse
import functools
import re
import shlex
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README] + DOCS
README_MAX_LINES = 260

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
CHAIN = {"&&", "||", ";"}
WRAPPERS = {"mpirun", "mpiexec", "srun", "nice", "timeout", "env", "time", "sudo"}
TRAINER_SUBS = ("train", "evaluate", "translate", "plan", "generate")


# ---- the parsers ------------------------------------------------------------------------------------------------
def _norm(option: str) -> str:
    return option.replace("_", "-")


class Spec:
    """The options of one (sub)command, and its actions when it has some (ckpt inspect|merge|...)."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.options = {_norm(o) for a in parser._actions for o in a.option_strings}
        self.flags = {_norm(o) for a in parser._actions if a.nargs == 0 for o in a.option_strings}  # no value
        self.actions: Dict[str, "Spec"] = {}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                self.actions = {name: Spec(sub) for name, sub in action.choices.items()}

    def any_action(self) -> "Spec":
        """An action left as a placeholder (`ranktable generate|merge|validate ...`): the union of all."""
        union = Spec(argparse.ArgumentParser(add_help=False))
        for spec in self.actions.values():
            union.options |= spec.options
            union.flags |= spec.flags
        return union


@functools.lru_cache(maxsize=None)
def specs() -> Dict[str, Spec]:
    """'' (mindrun itself), the trainer's subcommands, and launch, ranktable, doctor from the launcher."""
    from launcher import cli as launcher_cli
    from launcher import doctor
    from trainer.cli import build_parser

    top = build_parser()
    found = {"": Spec(top)}
    subs = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name in TRAINER_SUBS + ("ckpt", "data"):
        found[name] = Spec(subs[name])
    found["launch"] = Spec(launcher_cli.launch_parser())
    found["ranktable"] = Spec(launcher_cli.ranktable_parser())
    found["doctor"] = Spec(doctor.parser())
    assert set(found["ckpt"].actions) >= {"inspect", "merge", "reshard", "import-hf", "export-hf"}
    assert "prepare" in found["data"].actions
    return found


# ---- reading commands out of markdown ------------------------------------------------------------------------------
def _strip_fences(text: str) -> Tuple[List[List[str]], List[str]]:
    """(fenced blocks as lists of lines, the lines outside them; a fenced line is replaced by '')."""
    blocks, outside, current = [], [], None
    for line in text.splitlines():
        if FENCE.match(line):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
            outside.append("")
        elif current is not None:
            current.append(line)
            outside.append("")
        else:
            outside.append(line)
    return blocks, outside


def _logical_lines(block: List[str]) -> List[str]:
    """Backslash continuations joined; an indented line starting with `[`, `(`, `|` or `-` continues the previous
    one (the layout of syntax summaries)."""
    lines: List[str] = []
    pending = ""
    for line in block:
        if pending:
            pending += " " + line.strip()
        elif lines and line[:1].isspace() and line.strip()[:1] in "[(|-":
            lines[-1] += " " + line.strip()
            continue
        else:
            pending = line
        if pending.rstrip().endswith("\\"):
            pending = pending.rstrip()[:-1]
            continue
        lines.append(pending)
        pending = ""
    if pending:
        lines.append(pending)
    return lines


def shown_commands(text: str) -> List[str]:
    """Every line of a fenced block and every inline code span that holds a mindrun command."""
    blocks, outside = _strip_fences(text)
    candidates = [line for block in blocks for line in _logical_lines(block)]
    for paragraph in re.split(r"\n\s*\n", "\n".join(outside)):
        candidates += [m.group(2).strip() for m in INLINE_CODE.finditer(paragraph.replace("\n", " "))]
    return [c for c in candidates if re.search(r"(^|[\s/])mindrun\s|python3?\s+-m\s+(trainer|launcher)\b", c)]


def _tokens(command: str) -> List[str]:
    try:
        words = shlex.split(command, comments=True)
    except ValueError:  # an apostrophe in a summary's comment: plain words, comment cut at ' #'
        words = re.sub(r"(^|\s)#.*", "", command).split()
    out = []
    for word in words:
        if word.endswith(";") and word != ";":
            out += [word[:-1], ";"]
        else:
            out.append(word)
    return out


def _flag(token: str) -> Optional[str]:
    """The option a token shows (`--set`, `[--out`, `--dtype=x`, `-o`), or None."""
    token = token.lstrip("[(")
    m = re.match(r"--[A-Za-z0-9][A-Za-z0-9_-]*|-[A-Za-z](?![\w-])", token)
    return m.group(0) if m else None


def _placeholder(token: str) -> bool:
    return token in ("|", "...") or token[:1] in "[(" or token[-1:] in "])" or token.endswith("...")


def _is_program_start(tokens: List[str], i: int) -> Optional[int]:
    """Where the arguments of a mindrun command begin when one starts at tokens[i], else None."""
    word = tokens[i]
    if Path(word).name == "mindrun":
        return i + 1
    if re.fullmatch(r"(.*/)?python3?(\.\d+)?", word) and tokens[i + 1:i + 2] == ["-m"] and \
            i + 2 < len(tokens) and tokens[i + 2] in ("trainer", "launcher"):
        return i + 2  # the module name stays, so that the walker knows which
    return None


class Checker:
    def __init__(self, where: str):
        self.where = where
        self.errors: List[str] = []
        self.flags_checked = 0

    def _check(self, flag: str, spec: Spec, sub: str) -> None:
        self.flags_checked += 1
        if _norm(flag) not in spec.options:
            self.errors.append(f"{self.where}: `{sub}` has no option {flag}")

    def _ends(self, tokens: List[str], i: int, actions: Dict[str, Spec]) -> bool:
        """Whether tokens[i] ends the command: `&&`, `;`, or a pipe into another program."""
        if tokens[i] in CHAIN:
            return True
        if tokens[i] != "|":
            return False
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        return not (following[:1] in "-[(" or following in actions)  # else: an alternative in a summary

    def mindrun(self, tokens: List[str], i: int) -> int:
        """Check `mindrun ARGS` from tokens[i] (the first argument); return where the command ends."""
        if i < len(tokens) and tokens[i] == "trainer":
            i += 1
        elif i < len(tokens) and tokens[i] == "launcher":
            i += 1
            if i >= len(tokens) or tokens[i] not in ("launch", "ranktable", "doctor"):
                return self.launch(tokens, i)
        top = specs()[""]
        while i < len(tokens) and not self._ends(tokens, i, {}):
            token = tokens[i]
            flag = _flag(token)
            if flag:
                self._check(flag, top, "mindrun")
                i += 1
                continue
            if token == "launch":
                return self.launch(tokens, i + 1)
            if token in specs():
                return self.options(tokens, i + 1, specs()[token], f"mindrun {token}")
            if re.fullmatch(r"[a-z][a-z-]*", token):
                self.errors.append(f"{self.where}: `mindrun` has no subcommand {token!r}")
            return i + 1  # a placeholder such as `mindrun <sub>: error: ...`
        return i

    def options(self, tokens: List[str], i: int, spec: Spec, sub: str) -> int:
        current = spec
        if spec.actions:
            current = None
        while i < len(tokens) and not self._ends(tokens, i, spec.actions):
            token = tokens[i]
            flag = _flag(token)
            if spec.actions and token in spec.actions and (current is None or tokens[i - 1] == "|"):
                current, sub = spec.actions[token], f"{sub.split()[0]} {sub.split()[1]} {token}"
            elif flag:
                if current is None:  # `ranktable generate|merge|validate --x` or flags before the action
                    current = spec.any_action()
                self._check(flag, current, sub)
            elif current is None and not _placeholder(token) and re.fullmatch(r"[a-z][a-z-]*", token):
                self.errors.append(f"{self.where}: `{sub}` has no action {token!r}")
                current = spec.any_action()
            i += 1
        return i

    def launch(self, tokens: List[str], i: int) -> int:
        spec = specs()["launch"]
        while i < len(tokens) and not self._ends(tokens, i, {}):
            token = tokens[i]
            if token == "-m" or (token.startswith("-m") and not token.startswith("--")):
                module = tokens[i + 1] if token == "-m" and i + 1 < len(tokens) else token[2:]
                i += 2 if token == "-m" else 1
                if module in ("trainer", "launcher"):
                    return self.mindrun(tokens, i - 1 if token == "-m" else i)  # `-m trainer train ...`
                return self._program(tokens, i)
            flag = _flag(token)
            if flag and not re.fullmatch(r"-\d+", token):
                self._check(flag, spec, "mindrun launch")
                takes_value = _norm(flag) not in spec.flags and "=" not in token and not token.endswith("]")
                i += 2 if takes_value else 1
                continue
            if _placeholder(token):
                i += 1
                continue
            return self._program(tokens, i + 1)  # the script: the rest is its own
        return i

    def _program(self, tokens: List[str], i: int) -> int:
        """Skip the launched program's arguments (a `| -m MODULE` alternative in a summary included)."""
        while i < len(tokens) and not self._ends(tokens, i, {}):
            i += 1
        return i


def check_page(text: str, where: str) -> Checker:
    checker = Checker(where)
    for command in shown_commands(text):
        tokens = _tokens(command)
        checker.where = f"{where}: {command.strip()[:100]!r}"
        i, segment_start = 0, 0
        while i < len(tokens):
            if tokens[i] in CHAIN or tokens[i] == "|":
                i += 1
                segment_start = i
                continue
            while segment_start < len(tokens) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[segment_start]):
                segment_start += 1  # VAR=value before a command
            first = tokens[segment_start] if segment_start < len(tokens) else ""
            start = _is_program_start(tokens, i) if (i == segment_start or Path(first).name in WRAPPERS) else None
            if start is None:
                i += 1
                continue
            i = checker.mindrun(tokens, start)
            segment_start = i
    checker.where = where
    return checker


# ---- the checker itself: it must catch what it is for ----------------------------------------------------------
@pytest.mark.parametrize("text, bad", [
    ("```bash\nmindrun train --config small --bogus-flag 1\n```", "--bogus-flag"),
    ("```bash\nmindrun train \\\n    --config small \\\n    --bogus_flag 1\n```", "--bogus_flag"),
    ("```\nmindrun launch --worker_num 2 -m trainer train --config tiny --nope\n```", "--nope"),
    ("```\nmindrun launch --worker_num 2 --no_such_option 3 train.py\n```", "--no_such_option"),
    ("```\nmindrun ckpt reshard DIR --parallel dp=1,mp=2 --outt x\n```", "--outt"),
    ("```\nmindrun ckpt inspect DIR [--jsonx] | merge DIR OUT.ckpt | reshard DIR --parallel dp=N,mp=M\n```", "--jsonx"),
    ("```\nmindrun ckpt inspect DIR [--json] | merge DIR OUT.ckpt | reshard DIR [--outdir DIR]\n```", "--outdir"),
    ("```\nmindrun data      prepare FILES... --out DIR\n                  [--bogus N]\n```", "--bogus"),
    ("```\nprintf 'x\\n' | .venv/bin/mindrun translate --checkpoint runs/x --beams 5\n```", "--beams"),
    ("```\nmindrun plan --config small | head -3 && mindrun evaluate --checkpoint x --splitt test\n```", "--splitt"),
    ("```\nmpirun -n 16 mindrun launch --mpii train.py\n```", "--mpii"),
    ("```\npython -m trainer train --resumee\n```", "--resumee"),
    ("```\npython -m launcher ranktable validate t.json --worldsize 3\n```", "--worldsize"),
    ("Run `mindrun doctor --checkpoint_dirx runs` first.", "--checkpoint_dirx"),
    ("```\nmindrun trian --config small\n```", "trian"),
])
def test_the_checker_catches_a_flag_that_does_not_exist(text, bad):
    checker = check_page(text, "example")
    assert checker.errors and bad in checker.errors[0], checker.errors


@pytest.mark.parametrize("text", [
    "```\nmindrun train --data_dir d --data-dir d --set a=b --resume\n```",  # both spellings
    "```\nmindrun launch --worker-num 2 --local_worker_num 2 -m mymod --lr 3 --tail_worker_log 1\n```",
    "```\nmindrun launch --worker_num 2 train.py --lr 1e-3 --anything\n```",
    "```\nmindrun launch [msrun options] [--cluster FILE] [--dry_run] SCRIPT.py [args] | -m MODULE [args]\n```",
    "```\nmindrun ckpt inspect DIR [--json] | merge DIR OUT.ckpt | reshard DIR --parallel dp=N,mp=M [--out DIR]\n"
    "                  | import-hf HF_DIR --out RUN [--config RECIPE] [--parallel dp=N,mp=M]\n```",
    "```\nmindrun generate --checkpoint RUN (--prompt TEXT | --prompt-ids \"1 17 42\") [--max-new-tokens N]\n```",
    "```\nmindrun ranktable generate|merge|validate ...\nmindrun ranktable generate --devices 0-7 -o t.json\n```",
    "```\nmindrun plan --config small | head -3\nmindrun --version\n```",
    "Errors read `mindrun <sub>: error: ...`; `pip install mindrun` is the launcher alone.",
])
def test_the_checker_accepts_what_exists(text):
    checker = check_page(text, "example")
    assert not checker.errors, checker.errors


# ---- the pages ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_flag_a_page_shows_exists(page):
    checker = check_page(page.read_text(encoding="utf-8"), str(page.relative_to(REPO)))
    assert not checker.errors, "\n".join(checker.errors)


def test_the_pages_show_commands_at_all():
    """Guards the extraction: a change that found no commands would pass the test above vacuously."""
    counts = {p.name: len(shown_commands(p.read_text(encoding="utf-8"))) for p in PAGES}
    flags = sum(check_page(p.read_text(encoding="utf-8"), p.name).flags_checked for p in PAGES)
    assert counts["README.md"] >= 20, counts
    assert sum(counts.values()) >= 80, counts
    assert flags >= 200, flags


def test_readme_keeps_the_two_commands_that_ci_runs():
    """`.ci/run` embeds the README's second command verbatim; the first is the project's main job."""
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    embedded = re.search(r"# --- the README's second command, verbatim ---\n(.*?); status=\$\?", ci).group(1)
    blocks, _ = _strip_fences(README.read_text(encoding="utf-8"))
    lines = [line for block in blocks for line in block]
    assert embedded in lines
    assert any(line.startswith("python3 -m venv .venv && .venv/bin/pip install -e '.[train]' && .venv/bin/mindrun "
                               "launch --worker_num 2 --local_worker_num 2 --bind_core True") for line in lines)


# ---- the README's shape and the links --------------------------------------------------------------------------
def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but `-` and `_` dropped, spaces to `-`."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set:
    _, outside = _strip_fences(path.read_text(encoding="utf-8"))
    seen: Dict[str, int] = {}
    found = set()
    for line in outside:
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = _slug(m.group(2))
            found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return found


def links(path: Path) -> List[str]:
    _, outside = _strip_fences(path.read_text(encoding="utf-8"))
    text = INLINE_CODE.sub("", "\n".join(outside))
    return [m.group(2) for m in LINK.finditer(text)]


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail to docs/"


def test_readme_has_a_table_of_contents_of_its_own_sections():
    text = README.read_text(encoding="utf-8")
    _, outside = _strip_fences(text)
    sections = [line[3:].strip() for line in outside if line.startswith("## ")]
    toc_heading = next((s for s in sections if s.lower() in ("contents", "table of contents")), None)
    assert toc_heading, "README.md has no '## Contents' section"
    body = "\n".join(outside).split(f"## {toc_heading}\n", 1)[1].split("\n## ", 1)[0]
    targets = [t for t in LINK.findall(body)]
    own = {t[1][1:] for t in targets if t[1].startswith("#")}
    assert own <= anchors(README), f"contents links to missing sections: {own - anchors(README)}"
    missing = [s for s in sections if s != toc_heading and _slug(s) not in own]
    assert not missing, f"sections not in the table of contents: {missing}"


def test_readme_links_every_page_in_docs():
    assert DOCS, "docs/ has no pages"
    linked = {(README.parent / t.split("#")[0]).resolve() for t in links(README) if not t.startswith(("#", "http"))}
    missing = [str(p.relative_to(REPO)) for p in DOCS if p.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no file {file})")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no section #{anchor} in {file.name})")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)
