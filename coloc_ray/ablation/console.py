"""A quiet console for ``coloc run``: the trial table and one line per stage or trial event; the rest to logs.

Two halves:

* Driver (:func:`setup_console`): our own ``coloc_ray`` INFO lines and other libraries' warnings reach the
  terminal, each warning once; known-harmless lines (:data:`HARMLESS`) and everything Ray forwards from its
  workers (``log_to_driver``: Ray Train workers, Tune's actors) go to ``<log_dir>/driver.log`` and
  ``<log_dir>/ray-workers.log``. A forwarded line that reads as a warning the user must act on is still
  shown, once. ``verbose`` shows everything, as before.
* Trial (:func:`trial_output`): inside a Tune trial, the process's file descriptors 1 and 2 are redirected
  into ``trial.log``, so library progress bars (lm-eval and datasets pass ``disable=`` to tqdm themselves:
  environment switches cannot silence them), subprocess chatter (lm-eval's ``git`` call) and logging all
  land there. Fd-level, not ``sys.stdout``-level: C code, subprocesses and handlers that captured
  ``sys.stderr`` earlier write to the fds too.

The choice between quiet and verbose reaches trial processes through :data:`VERBOSE_ENV`, which local Ray
workers inherit from the driver (set before Ray starts).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator, Optional

VERBOSE_ENV = "COLOC_VERBOSE"

# Lines that are known and harmless on a CPU machine: never on the quiet console (always in the logs).
HARMLESS = [re.compile(p) for p in (
    r"Failed to load CPU gemm_4bit_forward",       # bitsandbytes without the optional `kernels` package
    r"No module named 'kernels'",                  # the same, printed on import
    r"fatal: not a git repository",                # lm-eval records the git hash of the working dir
    r"Found multiple active Ray instances",        # another Ray on the machine; ours is addressed explicitly
    # lm-eval, when handed an already-loaded model (how every evaluation here calls it):
    r"`pretrained` model kwarg is not of type `str`",
    r"Passed an already-initialized model through `pretrained`",
    r"num_fewshot > 0 but fewshot_split is None",   # the task YAMLs' few-shot rule is the intended one
)]
# What reads as a warning in raw output (Python warnings, logging's WARNING/ERROR level names).
_WARNING_LINE = re.compile(r"\b(\w*Warning|WARNING|ERROR|CRITICAL)\b")
# Progress bars: tqdm's "NN%|" bar or a carriage-return redraw.
PROGRESS_BAR = re.compile(r"\d+%\|")


def is_harmless(text: str) -> bool:
    return any(p.search(text) for p in HARMLESS)


def env_verbose() -> bool:
    """The verbose switch as this process inherited it from the ``coloc`` driver."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


class _Once:
    """Remembers lines already shown (numbers removed, so 'pid=123' and 'pid=456' count as one)."""

    def __init__(self):
        self.seen: set[str] = set()
        self.lock = threading.Lock()

    def first(self, text: str) -> bool:
        # Keyed on what follows the level word, without a logger tag: lm-eval prints the same warning through
        # two formats ("name: msg" and "[module:line] msg") once it has set up its own handler.
        m = _WARNING_LINE.search(text)
        tail = text[m.end():] if m else text
        tail = re.sub(r"^[\s:]*(\[[^\]]*\]|[\w.]+:(?!\S))?\s*", "", tail)
        key = re.sub(r"\d+", "#", tail.strip())
        with self.lock:
            if key in self.seen:
                return False
            self.seen.add(key)
            return True


class QuietFilter(logging.Filter):
    """Console filter: ``coloc_ray`` at INFO, other loggers at WARNING; harmless lines dropped; each
    warning shown once."""

    def __init__(self):
        super().__init__()
        self.once = _Once()

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name == "coloc_ray" or record.name.startswith("coloc_ray.")
        if record.levelno < (logging.INFO if ours else logging.WARNING):
            return False
        msg = record.getMessage()
        if is_harmless(msg):
            return False
        return record.levelno < logging.WARNING or self.once.first(f"{record.name}:{msg}")


class _TableAwareHandler(logging.StreamHandler):
    """A console handler that lifts the live trial table (:class:`TableEcho`) off a terminal around each line."""

    def emit(self, record: logging.LogRecord) -> None:
        echo = TableEcho.active
        if echo is None or not echo.tty:
            return super().emit(record)
        with echo._lock:
            echo.erase()
            super().emit(record)
            echo.redraw()


class _FirstLine(logging.Formatter):
    """Quiet console format: a record's first line only (tracebacks and long messages stay in driver.log)."""

    def format(self, record: logging.LogRecord) -> str:
        lines = record.getMessage().splitlines() or [""]
        more = len(lines) > 1 or record.exc_info is not None
        short = logging.makeLogRecord({**record.__dict__, "msg": lines[0] + (" [more in driver.log]" if more else ""),
                                       "args": None, "exc_info": None, "exc_text": None, "stack_info": None})
        return super().format(short)


class Console:
    """What :func:`setup_console` installed; :meth:`close` puts the previous logging and Ray set-up back."""

    def __init__(self, root_state: tuple, handlers: list[logging.Handler], undo: list[Callable[[], None]]):
        self._root_state, self.handlers, self._undo = root_state, handlers, undo

    def close(self) -> None:
        root = logging.getLogger()
        for h in self.handlers:
            root.removeHandler(h)
            h.close()
        handlers, level, capture = self._root_state
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.captureWarnings(capture)
        for fn in reversed(self._undo):
            fn()

    def __enter__(self) -> "Console":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def setup_console(verbose: bool, log_dir: Optional[str | Path] = None) -> Console:
    """Configure the driver's logging for ``coloc run``.

    Args:
        verbose: show everything (library INFO, Ray worker output, harmless warnings) as before.
        log_dir: local folder for ``driver.log`` (every record at INFO+, DEBUG when verbose) and
            ``ray-workers.log`` (every line Ray forwards from its workers). None: console only.

    Returns:
        a :class:`Console` whose ``close()`` restores the previous set-up (tests; the CLI just exits).
    """
    env = {VERBOSE_ENV: "1" if verbose else "0"}  # set before Ray starts: local Ray workers inherit them
    if not verbose:
        # Tune's own console output (its "Configuration for experiment" box, result paths): the legacy
        # reporter is silent at verbose=0, the new one is not. MLflow: log through our handlers, not its own.
        env.update(RAY_AIR_NEW_OUTPUT="0", MLFLOW_CONFIGURE_LOGGING="false")
    undo: list[Callable[[], None]] = [_set_env(env)]
    root = logging.getLogger()
    state = (list(root.handlers), root.level, _capturing_warnings())
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    console = _TableAwareHandler(sys.stderr)
    console.setFormatter(fmt if verbose else _FirstLine("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    if not verbose:
        console.addFilter(QuietFilter())
    handlers: list[logging.Handler] = [console]
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(Path(log_dir) / "driver.log")
        fh.setFormatter(fmt)
        handlers.append(fh)
        undo.append(route_ray_worker_output(Path(log_dir) / "ray-workers.log", verbose))
    for h in handlers:
        root.addHandler(h)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    undo.append(_loggers_to_root(("ray", "mlflow")))
    logging.captureWarnings(True)  # warnings.warn -> the 'py.warnings' logger -> the filter above (once)
    return Console(state, handlers, undo)


def _set_env(values: dict[str, str]) -> Callable[[], None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)

    def undo() -> None:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    return undo


def _loggers_to_root(names: tuple[str, ...]) -> Callable[[], None]:
    """Libraries that give their logger its own stderr handler and stop propagation (Ray's driver logger:
    Tune, Train; MLflow's when imported before MLFLOW_CONFIGURE_LOGGING was set) bypass the filter above.
    ``ray.init(configure_logging=False)`` even leaves Ray's without a handler (logging's last resort then
    prints its warnings raw). Send their records through the root handlers. Returns an undo function."""
    try:
        import ray  # noqa: F401  (importing ray configures the "ray" logger once: handler + propagate=False)
    except ImportError:
        pass
    saved = []
    for name in names:
        lg = logging.getLogger(name)
        saved.append((lg, list(lg.handlers), lg.propagate))
        lg.handlers.clear()
        lg.propagate = True

    def undo() -> None:
        for lg, handlers, propagate in saved:
            lg.handlers[:], lg.propagate = handlers, propagate

    return undo


def _capturing_warnings() -> bool:
    import warnings

    return getattr(warnings.showwarning, "__module__", "") == "logging"


# -- Ray's log_to_driver stream ----------------------------------------------------------------------------------

RAY_HANDLER = "ray_print_logs"  # the name ray.init registers its printer under (ray/_private/worker.py)


def route_ray_worker_output(path: Path, verbose: bool) -> Callable[[], None]:
    """Send what Ray forwards from worker processes to ``path``; on the console only when ``verbose``,
    except raylet lines (e.g. the OOM killer) and warnings, once each. Works whether or not Ray has
    started yet (it swaps the printer ``ray.init`` registers, now or later). Returns an undo function.

    Ray has no public hook for the worker output it forwards (``log_to_driver`` is all or nothing), so this is
    the one place that reaches into ``ray._private.ray_logging``; Ray is pinned, and tests/console fails if it moves.
    """
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    sink = _WorkerLogSink(path, verbose)
    original_add = dispatcher.add_handler

    def add_handler(name: str, handler: Callable) -> None:
        original_add(name, sink.wrap(handler) if name == RAY_HANDLER else handler)

    with dispatcher._lock:
        dispatcher.handlers = [(n, sink.wrap(h) if n == RAY_HANDLER else h) for n, h in dispatcher.handlers]
    dispatcher.add_handler = add_handler

    def undo() -> None:
        dispatcher.add_handler = original_add
        with dispatcher._lock:
            dispatcher.handlers = [(n, getattr(h, "_coloc_original", h)) for n, h in dispatcher.handlers]
        sink.close()

    return undo


class _WorkerLogSink:
    """Writes Ray's forwarded log batches (``{"pid", "actor_name", "lines", "is_err", ...}``) to a file."""

    def __init__(self, path: Path, verbose: bool):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "a", buffering=1)
        self.verbose, self.once, self.lock = verbose, _Once(), threading.Lock()

    def wrap(self, printer: Callable) -> Callable:
        def handle(data: dict) -> None:
            self.write(data)
            if self.verbose:
                printer(data)
                return
            shown = [ln for ln in data.get("lines", []) if self.shows(ln, data.get("pid"))]
            if shown:
                printer({**data, "lines": shown})

        handle._coloc_original = printer  # type: ignore[attr-defined]
        return handle

    def shows(self, line: str, pid) -> bool:
        """A forwarded line the quiet console still shows (once): raylet lines and warnings, not harmless ones."""
        if not line or line[0].isspace() or is_harmless(line) or PROGRESS_BAR.search(line):
            return False  # continuation lines (a warning's source line, traceback frames) never
        return (pid == "raylet" or bool(_WARNING_LINE.search(line))) and self.once.first(line)

    def write(self, data: dict) -> None:
        who = f"{data.get('actor_name') or data.get('task_name') or ''} pid={data.get('pid')}".strip()
        with self.lock:
            if self.f.closed:
                return
            for line in data.get("lines", []):
                # The autoscaler's status block every 5 s is no news on a fixed cluster: its warnings only.
                if data.get("pid") != "autoscaler" or _WARNING_LINE.search(line):
                    self.f.write(f"({who}) {line}\n")

    def close(self) -> None:
        with self.lock:
            self.f.close()


# -- inside a trial -----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def trial_output(log_path: str | Path, verbose: Optional[bool] = None) -> Iterator[Path]:
    """Redirect this process's stdout / stderr (fds 1 and 2) and logging into ``log_path`` for the block.

    Quiet (the default, ``verbose=None`` reads :data:`VERBOSE_ENV`): everything goes to the file; lines
    that read as warnings (not :data:`HARMLESS`, not progress bars) are also passed to the original stderr,
    where Ray forwards them to the driver (which shows each once). Verbose: everything is also passed on.
    The file is appended to (a retried trial keeps its first attempt's output).
    """
    verbose = env_verbose() if verbose is None else verbose
    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for s in (sys.stdout, sys.stderr):
        _flush(s)
    sink = open(path, "ab", buffering=0)  # opened here: a path that cannot be written fails before any redirect
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    read_fd, write_fd = os.pipe()
    pump = _Pump(read_fd, sink, saved[2], verbose)
    root = logging.getLogger()
    # Handlers that write to stderr already reach the file through fd 2; add one only where there is none.
    handler = None if root.handlers else logging.StreamHandler(os.fdopen(os.dup(write_fd), "w", buffering=1))
    if handler is not None:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                               datefmt="%H:%M:%S"))
    old_level = root.level
    try:
        pump.start()
        for fd in (1, 2):
            os.dup2(write_fd, fd)
        os.close(write_fd)
        if handler is not None:
            root.addHandler(handler)
        root.setLevel(min(old_level or logging.WARNING, logging.INFO))
        yield path
    finally:
        root.setLevel(old_level)
        if handler is not None:
            root.removeHandler(handler)
            handler.close()
            handler.stream.close()
        for s in (sys.stdout, sys.stderr):
            _flush(s)
        for fd, orig in saved.items():
            os.dup2(orig, fd)  # closes the pipe's last write ends: the pump sees EOF (unless a child holds one)
        pump.join(timeout=5.0)
        os.close(saved[1])
        if not pump.is_alive():
            os.close(saved[2])


def _flush(stream) -> None:
    with contextlib.suppress(Exception):
        stream.flush()


class _Pump(threading.Thread):
    """Copies the pipe into the log file; passes lines on to ``out_fd`` as :func:`trial_output` says."""

    def __init__(self, read_fd: int, sink, out_fd: int, verbose: bool):
        super().__init__(name="coloc-trial-output", daemon=True)
        self.read_fd, self.sink, self.out_fd, self.verbose = read_fd, sink, out_fd, verbose

    def run(self) -> None:
        # Never stops reading before EOF: a writer blocked on a full pipe would hang the trial.
        pending = b""
        with self.sink as f:
            while True:
                try:
                    chunk = os.read(self.read_fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                with contextlib.suppress(OSError):  # a full disk loses log lines, not the trial
                    f.write(chunk)
                if self.verbose:
                    self._out(chunk)
                    continue
                *lines, pending = re.split(rb"[\r\n]", pending + chunk)
                for ln in lines:
                    if self._passes(ln):
                        self._out(ln + b"\n")
                pending = pending[-4096:]
        os.close(self.read_fd)

    @staticmethod
    def _passes(line: bytes) -> bool:
        text = line.decode("utf-8", "replace")
        if not text or text[0].isspace():  # continuation lines: a warning's source line, traceback frames
            return False
        return bool(_WARNING_LINE.search(text)) and not is_harmless(text) and not PROGRESS_BAR.search(text)

    def _out(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self.out_fd, data)


# -- the trial table -----------------------------------------------------------------------------------------------

class TableEcho:
    """Prints a study's trial table without flooding the console.

    Every change of a trial's state or phase prints one event line (``12:03:04 A-t0: RUNNING finetune``).
    On a terminal the table itself is redrawn in place under those lines (steps, loss and ETA move there);
    elsewhere (a pipe, CI, a log file) it is printed once at the start and once when every trial has ended.
    The quiet console's log handler erases and redraws the table around each log line it prints.
    ``ProgressBoard`` calls :meth:`show` with each snapshot's rows and their formatted table.
    """

    active: Optional["TableEcho"] = None  # the echo a log line must not be printed through

    def __init__(self, stream=None, tty: Optional[bool] = None):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self._seen: dict[str, tuple] = {}
        self._drawn = 0          # lines of the table now on screen (terminal only)
        self._table = ""
        self._lock = threading.RLock()
        TableEcho.active = self

    def show(self, rows: list[dict], table: str) -> None:
        """Print what changed since the last call: event lines, then the table (see the class doc)."""
        import time

        with self._lock:
            first = not self._seen
            now = time.strftime("%H:%M:%S")
            events = []
            for r in rows:
                key = (r.get("state"), r.get("phase") or "")
                if self._seen.get(r["trial_id"]) != key:
                    if not first:
                        events.append(f"{now} {r['trial_id']}: {' '.join(k for k in key if k)}")
                    self._seen[r["trial_id"]] = key
            ended = all(r.get("state") in ("DONE", "SKIPPED", "ERROR") for r in rows)
            self._table = table
            self.erase()
            for e in events:
                self.stream.write(e + "\n")
            if self.tty or first or (ended and (events or not self._ended)):
                self._draw()
            self._ended = ended
            self.stream.flush()

    _ended = False

    def _draw(self) -> None:
        self.stream.write(self._table + "\n")
        self._drawn = self._table.count("\n") + 1 if self.tty else 0

    def erase(self) -> None:
        """Remove the table from a terminal (before a log line is printed under it)."""
        with self._lock:
            if self._drawn:
                self.stream.write(f"\x1b[{self._drawn}F\x1b[J")  # up n lines to column 0; clear to the end
                self._drawn = 0

    def redraw(self) -> None:
        with self._lock:
            if self.tty and self._table and not self._drawn:
                self._draw()
                self.stream.flush()

    def close(self) -> None:
        if TableEcho.active is self:
            TableEcho.active = None


TRIAL_LOG = "trial.log"


def trial_log_path(scratch: str | Path, study_name: str, trial_id: str) -> Path:
    """Where a trial keeps its log on its node: ``<scratch>/coloc-<study>/trials/<trial_id>/trial.log`` (the
    study name keeps two studies on one node apart; the trial uploads it to the study storage)."""
    return Path(scratch) / f"coloc-{study_name}" / "trials" / trial_id / TRIAL_LOG
