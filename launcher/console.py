"""What the launcher's console shows of the workers' logs: the job's output and live progress.

Worker logs keep every byte. The console gets, from each tailed rank:

- the job's own lines, each cut to MAX_LINE characters;
- progress bars (tqdm redraws a line with carriage returns): on a terminal, one line per tailed
  rank redrawn in place under the output; elsewhere (a file, CI, a scheduler's log) the newest
  frame of each rank every `interval` seconds, never one line per frame;
- MindSpore's own log lines only at ERROR and above, unless asked (`--show_ms_logs`, or GLOG_v
  set by the user); at the end, how many lines of each level every log holds.
"""
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, List, Optional, TextIO

# MindSpore's C++ ("[WARNING] DEVICE(123,7f..,python):2026-...") and Python ("[WARNING] ME(123:140..,
# MainProcess):...") loggers share this head.
MS_HEAD = re.compile(r"\[(DEBUG|INFO|WARNING|ERROR|CRITICAL)\] [A-Z][A-Z0-9_]*\(\d+[,:]")
HIDDEN_LEVELS = ("DEBUG", "INFO", "WARNING")
MAX_LINE = 400
REDRAW_S = 0.2


def ms_level(line: str) -> Optional[str]:
    """MindSpore's level of a log line ("WARNING"...), or None for anything else."""
    match = MS_HEAD.match(line)
    return match.group(1) if match else None


def split_ms(text: str):
    """(the text before a MindSpore log line that follows it on the same line, that log line or ''):
    C++ logs written right after a progress bar's frame."""
    match = MS_HEAD.search(text, 1)
    return (text[:match.start()], text[match.start():]) if match else (text, "")


def count_levels(path: Path) -> Counter:
    """How many MindSpore log lines of each level a log file holds."""
    counts: Counter = Counter()
    try:
        with open(path, "rb") as handle:
            for raw in handle:
                if raw.startswith(b"["):
                    level = ms_level(raw.decode("utf-8", "replace"))
                    if level:
                        counts[level] += 1
    except OSError:
        pass
    return counts


def hidden_summary(paths: Iterable[Path]) -> Optional[str]:
    """'worker_0.log 41 warnings, 3 info; ...' for the logs whose MindSpore lines the console hid."""
    parts = []
    for path in paths:
        counts = count_levels(path)
        shown = [f"{counts[level]} {level.lower()}{'s' if level == 'WARNING' and counts[level] != 1 else ''}"
                 for level in ("WARNING", "INFO", "DEBUG") if counts[level]]
        if shown:
            parts.append(f"{path.name} {', '.join(shown)}")
    return "; ".join(parts) if parts else None


def clip(text: str, where: str = "") -> str:
    """One console line of at most MAX_LINE characters (the log file keeps the rest)."""
    if len(text) <= MAX_LINE:
        return text
    return f"{text[:MAX_LINE]}... ({len(text) - MAX_LINE} more characters in {where or 'the log'})"


class Console:
    """Writes tailed lines and keeps each rank's newest progress frame; one per launcher."""

    def __init__(self, stream: TextIO = sys.stdout, show_ms_logs: bool = False, interval: float = 30.0,
                 terminal: Optional[bool] = None):
        self.stream = stream
        self.show_ms_logs = show_ms_logs
        self.interval = interval
        self.terminal = stream.isatty() if terminal is None else terminal
        self.frames: Dict[str, str] = {}  # prefix -> newest progress frame
        self.changed: Dict[str, bool] = {}
        self.drawn = 0  # status lines on screen (terminal)
        self.last_draw = 0.0
        self.last_report = time.monotonic()

    # ---- input ---------------------------------------------------------------------------
    def finished(self, prefix: str, frames: List[str], log: str = "", redrawn: bool = False) -> None:
        """A finished line of a tailed log, split at its carriage returns (`frames`, blank ones dropped;
        `redrawn`: it had some): its last frame is the line; a MindSpore log line glued after a
        progress bar's frame is split off, the frame kept as progress."""
        text = frames[-1] if frames else ""
        before, glued = split_ms(text)
        if glued and redrawn:
            self.progress(prefix, before)  # a bar's frame, then MindSpore wrote without a newline
        elif glued:
            self.line(prefix, before, log)
        self.line(prefix, glued or text, log)

    def line(self, prefix: str, text: str, log: str = "") -> None:
        """A line of output (after `finished` has taken it apart)."""
        level = ms_level(text)
        if level in HIDDEN_LEVELS and not self.show_ms_logs:
            return
        self._clear()
        self.stream.write(f"{prefix} {clip(text.rstrip(), log)}\n")
        if prefix in self.frames and text.strip() == self.frames[prefix].strip():
            self.changed[prefix] = False  # the bar's last frame was just printed as a line
        self._draw(force=True)

    def progress(self, prefix: str, frame: str) -> None:
        """The newest frame of a tailed rank's progress bar."""
        frame = frame.strip()
        if frame and frame != self.frames.get(prefix):
            self.frames[prefix] = frame
            self.changed[prefix] = True

    def say(self, text: str, stream: TextIO = sys.stderr) -> None:
        """A launcher message, printed without breaking the status lines."""
        self._clear()
        print(text, file=stream, flush=True)
        self._draw(force=True)

    # ---- output ----------------------------------------------------------------------------
    def tick(self) -> None:
        """Called from the launcher's loop: redraw (terminal) or report progress every `interval` s."""
        if self.terminal:
            self._draw()
            return
        now = time.monotonic()
        if now - self.last_report < self.interval:
            return
        self.last_report = now
        for prefix, frame in self.frames.items():
            if self.changed.get(prefix):
                self.stream.write(f"{prefix} {clip(frame)}\n")
                self.changed[prefix] = False
        self.stream.flush()

    def close(self) -> None:
        """Leave the terminal clean (the status lines removed)."""
        self._clear()
        self.frames.clear()

    def _status(self) -> List[str]:
        return [f"{prefix} {frame}" for prefix, frame in self.frames.items()]

    def _clear(self) -> None:
        if self.terminal and self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F\x1b[J")  # up to the first status line, erase below
            self.drawn = 0

    def _draw(self, force: bool = False) -> None:
        if not self.terminal:
            self.stream.flush()
            return
        now = time.monotonic()
        if not force and now - self.last_draw < REDRAW_S:
            return
        if not force and not any(self.changed.values()):
            return
        self._clear()
        width = _width(self.stream)
        lines = [line[:width - 1] for line in self._status()]
        for line in lines:
            self.stream.write(line + "\n")
        self.drawn = len(lines)
        self.last_draw = now
        self.changed = dict.fromkeys(self.changed, False)
        self.stream.flush()


def _width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 120


def closed_pipe_safe(main, argv=None) -> int:
    """Run a command's main; when stdout is a pipe its reader closed (`mindrun plan | head -3`), end quietly with
    the shell's code for SIGPIPE (141) instead of a BrokenPipeError traceback, for every subcommand."""
    import os
    import sys

    try:
        code = main(argv)
        sys.stdout.flush()  # a closed pipe shows at the last flush
        return code
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's exit flush must not raise again
        return 141


MS_HEAD_BYTES = re.compile(MS_HEAD.pattern.encode())
# the start of such a head at the end of what was read (the rest comes with the next read); not tqdm's "[00:01<"
PARTIAL_HEAD = re.compile(rb"\[(?:[A-Z]{0,8}|(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\](?: [A-Z0-9_]*(?:\(\d*)?)?)$")


class MindSporeLinesAside:
    """A process's own stderr (fd 2) through a pipe: MindSpore's log lines below ERROR go to `log` (counted),
    everything else to the terminal as written, so a command run directly (not under `mindrun launch`) shows
    the console a launched job shows. tqdm's carriage-return frames pass at once; a MindSpore line written
    right after a frame, on the same line, is still recognised. `close()` restores fd 2 and returns the
    end-of-run line (None when nothing was set aside)."""

    def __init__(self, log: Path):
        import threading

        self.log = Path(log)
        self.counts: Counter = Counter()
        self.real = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self.reader = threading.Thread(target=self._pump, args=(read,), name="mindspore-lines-aside", daemon=True)
        self.reader.start()

    def _pump(self, read: int) -> None:
        pending = b""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log, os.fdopen(read, "rb", buffering=0) as pipe:
            while True:
                chunk = pipe.read(65536)
                if not chunk:
                    break
                pending = self._sort(pending + chunk, log)
            if pending:  # the end of the stream inside a line
                if ms_level(pending.decode("utf-8", "replace")) in HIDDEN_LEVELS:
                    log.write(pending + b"\n")
                    self.counts[ms_level(pending.decode("utf-8", "replace"))] += 1
                else:
                    os.write(self.real, pending)

    def _sort(self, data: bytes, log) -> bytes:
        """Write out what `data` decides; return an unfinished MindSpore line to wait for."""
        while data:
            head = MS_HEAD_BYTES.search(data)
            if head is None or head.start() > 0:  # the job's own bytes up to the next MindSpore line
                cut = len(data) if head is None else head.start()
                if head is None:  # the chunk may end inside a MindSpore line's head: keep that for the next
                    partial = PARTIAL_HEAD.search(data)
                    cut = partial.start() if partial else cut
                os.write(self.real, data[:cut])
                data = data[cut:]
                if head is None:
                    return data
                continue
            end = data.find(b"\n")
            if end < 0:
                return data  # a MindSpore line still being written
            line, data = data[:end + 1], data[end + 1:]
            level = ms_level(line.decode("utf-8", "replace"))
            if level in HIDDEN_LEVELS:
                log.write(line)
                log.flush()
                self.counts[level] += 1
            else:
                os.write(self.real, line)
        return b""

    def close(self) -> Optional[str]:
        """Restore fd 2 and say how many MindSpore lines went to the log, and where."""
        sys.stderr.flush()
        os.dup2(self.real, 2)  # the pipe's last write end closes: the reader drains it and ends
        self.reader.join(timeout=5)
        os.close(self.real)
        shown = [f"{self.counts[level]} {level.lower()}{'s' if level == 'WARNING' and self.counts[level] != 1 else ''}"
                 for level in ("WARNING", "INFO", "DEBUG") if self.counts[level]]
        if not shown:
            return None
        return f"MindSpore's own log lines stay in {self.log} ({', '.join(shown)}); GLOG_v shows them"
