"""The quiet console: what a trial prints goes to its trial.log, what Ray forwards goes to ray-workers.log,
and the terminal keeps the trial table, our stage lines and each actionable warning once."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap

from coloc_ray.ablation import console as C
from tests.conftest import REPO

BAR = re.compile(r"\d+%\|")

# A child process: the same noise a trial makes, inside trial_output (fd-level: run it as its own process).
CHILD = textwrap.dedent("""
    import sys
    from coloc_ray.ablation.console import trial_output
    from tests.console.noisy import make_noise
    with trial_output(sys.argv[1], verbose=sys.argv[2] == "1"):
        make_noise("child")
        import os
        os.write(2, b"raw fd-2 write from C code\\n")
    print("after the block: back on the console")
""")


def _child(tmp_path, verbose: bool):
    log = tmp_path / "t" / "trial.log"
    p = subprocess.run([sys.executable, "-c", CHILD, str(log), "1" if verbose else "0"], cwd=REPO,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "after the block: back on the console"  # fds restored
    return p.stdout + p.stderr, log.read_text()


def test_trial_output_keeps_the_noise_in_the_trial_log_and_passes_one_warning(tmp_path):
    from tests.console.noisy import ACTIONABLE

    shown, log = _child(tmp_path, verbose=False)
    # The log holds everything: the bar, the harmless lines, the subprocess's and C code's fd-2 writes,
    # the logged traceback, stdout, and the warning.
    for want in ("child items: 100%|", "gemm_4bit_forward", "fatal: not a git repository", "Traceback",
                 "ValueError: child: an exception", "child: plain chatter", "raw fd-2 write", ACTIONABLE):
        assert want in log, want
    # The process's own output shows only the actionable warning (one line), and what follows the block.
    assert shown.count(ACTIONABLE) == 1
    assert not BAR.search(shown) and "Traceback" not in shown and "gemm_4bit" not in shown
    assert "not a git repository" not in shown and "plain chatter" not in shown
    assert "after the block" not in log


def test_trial_output_verbose_passes_everything_on(tmp_path):
    shown, log = _child(tmp_path, verbose=True)
    for want in ("child items: 100%|", "gemm_4bit_forward", "Traceback", "plain chatter"):
        assert want in shown and want in log, want


def test_driver_console_shows_ours_and_each_warning_once(tmp_path, capsys):
    con = C.setup_console(verbose=False, log_dir=tmp_path / "logs")
    try:
        logging.getLogger("coloc_ray.ablation.spine").info("probes: running")
        logging.getLogger("ray.tune").info("library info line")
        for _ in range(3):
            logging.getLogger("some.lib").warning("disk almost full on /scratch")
        logging.getLogger("ray._private.services").warning("Found multiple active Ray instances: {'a', 'b'}")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("ray.tune").error("Trial failed\nmore detail", exc_info=True)
    finally:
        con.close()
    err = capsys.readouterr().err
    assert "probes: running" in err and "library info line" not in err
    assert err.count("disk almost full") == 1 and "multiple active Ray" not in err
    assert "Trial failed [more in driver.log]" in err and "Traceback" not in err
    full = (tmp_path / "logs" / "driver.log").read_text()
    assert "library info line" in full and full.count("disk almost full") == 3 and "Traceback" in full


def test_ray_forwarded_lines_go_to_the_file_and_only_warnings_to_the_printer(tmp_path):
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    printed: list = []

    def printer(data):  # stands in for Ray's own printer, registered by ray.init
        printed.extend(data["lines"])

    # A Ray this test session connected earlier left its own printer registered: set it aside for the test.
    saved, dispatcher.handlers = dispatcher.handlers, []
    dispatcher.add_handler(C.RAY_HANDLER, printer)
    try:
        undo = C.route_ray_worker_output(tmp_path / "ray-workers.log", verbose=False)
        for pid in (11, 12):
            dispatcher.emit({"pid": pid, "actor_name": "RayTrainWorker", "is_err": True, "lines": [
                "step 10/24 loss 1.2", "eval: 40%|####      | 2/5", "WARNING x: Failed to load CPU gemm_4bit_forward",
                f"/a/b.py:{pid}: UserWarning: check your data dir"]})
        dispatcher.emit({"pid": "raylet", "is_err": False, "lines": ["Task was killed due to the node running low "
                                                                    "on memory"]})
        undo()
        dispatcher.emit({"pid": 13, "is_err": False, "lines": ["after undo"]})
    finally:
        dispatcher.handlers = saved
    # One warning (the pid-13 copy differs only in a number), the raylet's line, then Ray's printer again.
    assert printed == ["/a/b.py:11: UserWarning: check your data dir",
                       "Task was killed due to the node running low on memory", "after undo"]
    text = (tmp_path / "ray-workers.log").read_text()
    assert text.count("step 10/24") == 2 and "(RayTrainWorker pid=12) eval: 40%|" in text and "after undo" not in text


# -- the trial table ------------------------------------------------------------------------------------------------

def _rows(*states):
    return [{"trial_id": t, "state": s, "phase": p, "step": n} for t, s, p, n in states]


def _feed(echo, snaps):
    from coloc_ray.ablation.progress import format_table

    for rows in snaps:
        echo.show(rows, format_table({"trials": [{"arm": "A", "control_seed": None, "train_seed": 0,
                                                   "total_steps": 24, **r} for r in rows], "counts": {}}))


SNAPS = [
    _rows(("base", "PENDING", "", 0), ("A-t0", "PENDING", "", 0)),
    _rows(("base", "RUNNING", "eval", 0), ("A-t0", "RUNNING", "finetune", 1)),
    *[_rows(("base", "RUNNING", "eval", 0), ("A-t0", "RUNNING", "finetune", s)) for s in range(2, 24)],
    _rows(("base", "DONE", "done", 0), ("A-t0", "RUNNING", "eval", 24)),
    _rows(("base", "DONE", "done", 0), ("A-t0", "DONE", "done", 24)),
]


def test_table_echo_off_a_terminal_prints_events_not_every_step():
    import io

    out = io.StringIO()
    echo = C.TableEcho(out, tty=False)
    try:
        _feed(echo, SNAPS)
    finally:
        echo.close()
    lines = out.getvalue().splitlines()
    events = [ln.split(" ", 1)[1] for ln in lines if re.match(r"\d\d:\d\d:\d\d ", ln)]
    assert events == ["base: RUNNING eval", "A-t0: RUNNING finetune", "base: DONE done", "A-t0: RUNNING eval",
                      "A-t0: DONE done"]
    assert sum(ln.startswith("trial_id") for ln in lines) == 2  # the table at the start and at the end
    assert len(lines) < 20 and "\x1b[" not in out.getvalue()   # 26 snapshots, no step-by-step reprint


def test_table_echo_on_a_terminal_redraws_in_place_and_lifts_it_for_log_lines(tmp_path):
    import io

    out = io.StringIO()
    echo = C.TableEcho(out, tty=True)
    con = C.setup_console(verbose=False)
    handler = logging.getLogger().handlers[0]
    handler.setStream(out)
    try:
        _feed(echo, SNAPS[:3])
        logging.getLogger("coloc_ray.x").info("report: running")
    finally:
        con.close()
        echo.close()
    text = out.getvalue()
    table_lines = 4  # header, two trials, the counts line
    assert text.count(f"\x1b[{table_lines}F\x1b[J") == 3  # erased before snapshots 2 and 3 and the log line
    tail = text.rsplit("\x1b[J", 1)[1].splitlines()
    assert tail[0].endswith("report: running") and tail[1].startswith("trial_id")  # the table back under it
    assert "2/24" in tail[3]


def test_verbose_flag_before_or_after_the_subcommand():
    from coloc_ray.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["run", "s.yaml", "-v"]).verbose and parse(["-v", "run", "s.yaml"]).verbose
    assert parse(["resume", "d", "--verbose"]).verbose and not parse(["run", "s.yaml"]).verbose
