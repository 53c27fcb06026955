"""Live view of a study's trials: ``progress.json`` in the study dir and a compact table.

The driver feeds a :class:`ProgressBoard` from Tune's trial events and reports; the board writes
``progress.json`` when something changed (at most every ``min_interval_s``) and prints the table.
``render_progress(study_dir)`` rebuilds the table from the file alone (``coloc status`` reuses it).
Inside a trial, :class:`FileWatcher` turns the fine-tune's own progress file into step / loss / ETA reports.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from coloc_ray.ablation.layout import PROGRESS
from coloc_ray.io import read_json, write_json

log = logging.getLogger(__name__)

COLUMNS = ("trial_id", "arm", "ctrl", "train", "state", "try", "phase", "step", "loss", "eta")
TERMINAL = ("DONE", "SKIPPED", "ERROR")


class ProgressBoard:
    """Trial rows keyed by trial id; persisted to ``<study_dir>/progress.json``.

    Args:
        study_dir: where ``progress.json`` goes.
        specs: every trial of the study (dicts with trial_id, arm, control_seed, train_seed).
        total_steps: fine-tune steps per trial (for the step column and ETA).
        slots: trials that run at once (study ETA = remaining work / slots).
        echo: print the table when it changes.
    """

    def __init__(self, study_dir, specs: list[dict], total_steps: int, slots: int = 1,
                 echo: bool = True, min_interval_s: float = 2.0):
        root = str(study_dir)
        self.path = f"{root.rstrip('/')}/{PROGRESS}" if "://" in root else Path(root) / PROGRESS
        self.total_steps, self.slots, self.echo, self.min_interval_s = total_steps, max(1, slots), echo, min_interval_s
        self.rows = {s["trial_id"]: {"trial_id": s["trial_id"], "arm": s["arm"], "control_seed": s["control_seed"],
                                     "train_seed": s["train_seed"], "state": "PENDING", "phase": "", "step": 0,
                                     "total_steps": 0 if s["arm"] == "base" else total_steps, "loss": None,
                                     "started": None, "wall_s": None, "retries": 0, "ft_node_id": None}
                     for s in specs}
        self._dirty, self._last_write, self._last_table, self._echo = True, 0.0, "", None

    def update(self, trial_id: str, **fields) -> None:
        row = self.rows.get(trial_id)
        if row is None:
            return
        if fields.get("state") == "RETRYING":  # the trial failed and Tune starts it again (its last checkpoint)
            row["retries"] = row.get("retries", 0) + 1
            row["started"], row["ft_node_id"], self._dirty = None, None, True
        if fields.get("state") == "RUNNING" and row["started"] is None:
            row["started"] = time.time()
        if fields.get("state") in TERMINAL and row["started"] is not None and row["wall_s"] is None:
            row["wall_s"] = round(time.time() - row["started"], 2)
        eta = fields.pop("eta_s", None)
        if fields.get("step") is not None:  # the fine-tune's own ETA (no model loading, no startup) or none
            row["ft_eta_s"], row["ft_eta_at"] = eta, time.time()
        for k, v in fields.items():
            if v is not None and row.get(k) != v:
                row[k], self._dirty = v, True

    def _eta(self, row: dict, mean_wall: float | None, now: float) -> float | None:
        if row["state"] in TERMINAL:
            return 0.0
        if row["state"] == "RUNNING" and row["started"]:
            elapsed = now - row["started"]
            if row["phase"] == "finetune" and row.get("ft_eta_s") is not None:
                return max(0.0, row["ft_eta_s"] - (now - row["ft_eta_at"]))
            if row["step"] and row["total_steps"] and row["phase"] == "finetune":
                return elapsed / row["step"] * (row["total_steps"] - row["step"])
            return max(0.0, mean_wall - elapsed) if mean_wall else None
        return mean_wall

    def snapshot(self) -> dict:
        now = time.time()
        walls = [r["wall_s"] for r in self.rows.values() if r["state"] == "DONE" and r["wall_s"]]
        mean_wall = sum(walls) / len(walls) if walls else None
        rows = [{**r, "eta_s": self._eta(r, mean_wall, now)} for r in self.rows.values()]
        etas = [r["eta_s"] for r in rows if r["state"] not in TERMINAL]
        study_eta = None if any(e is None for e in etas) else sum(etas) / self.slots
        counts = {}
        for r in rows:
            counts[r["state"]] = counts.get(r["state"], 0) + 1
        return {"updated": now, "counts": counts, "eta_s": study_eta, "trials": rows}

    def flush(self, force: bool = False) -> None:
        """Write ``progress.json`` and print the table if something changed (throttled unless ``force``)."""
        now = time.time()
        if not (self._dirty or force) or (not force and now - self._last_write < self.min_interval_s):
            return
        snap = self.snapshot()
        write_json(self.path, snap)
        self._dirty, self._last_write = False, now
        table = format_table(snap)
        if self.echo and table != self._last_table:
            if self._echo is None:
                from coloc_ray.ablation.console import TableEcho

                self._echo = TableEcho()
            # One line per trial event; the table redrawn in place on a terminal, printed at start and end in a log.
            self._echo.show(snap["trials"], table)
        self._last_table = table


class FileWatcher:
    """Polls a fine-tune's ``progress.json`` on a daemon thread; reports each new step while in ``with``.

    ``report`` gets ``{"phase": "finetune", "step", "loss", "eta_s", "tokens_per_s", "node_id"}`` (``node_id``:
    the Ray node of the fine-tune's rank 0, None outside Ray). A missing or
    unreadable file is skipped (it appears at the first progress line); the thread stops on exit.
    """

    def __init__(self, path, report, interval_s: float = 2.0):
        self.path, self.report, self.interval_s = path if "://" in str(path) else Path(path), report, interval_s
        self._stop, self._last = threading.Event(), None
        self._thread = threading.Thread(target=self._run, name="coloc-ft-progress", daemon=True)

    def __enter__(self) -> "FileWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=max(5.0, 2 * self.interval_s))  # a report may block on Tune briefly

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception as e:  # a failing report must not end the trial; the next poll tries again
                log.warning("fine-tune progress report failed: %s", e)

    def poll(self) -> dict | None:
        """Read the file once; report (and return) it if its step is new."""
        try:
            d = read_json(self.path)
            step = int(d["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if step == self._last:
            return None
        self._last = step
        m = {"phase": "finetune", "step": step, "loss": d.get("loss"), "eta_s": d.get("eta_s"),
             "tokens_per_s": d.get("tokens_per_s"), "node_id": d.get("node_id")}
        self.report(m)
        return m


def _fmt_s(s) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def format_table(snap: dict) -> str:
    """The compact table of a progress snapshot."""
    rows = [COLUMNS]
    for r in snap["trials"]:
        step = f"{r['step']}/{r['total_steps']}" if r.get("total_steps") else "-"
        loss = f"{r['loss']:.4f}" if isinstance(r.get("loss"), (int, float)) else "-"
        rows.append((r["trial_id"], r["arm"], str(r["control_seed"] if r["control_seed"] is not None else "-"),
                     str(r["train_seed"]), r["state"], str(1 + int(r.get("retries") or 0)), r.get("phase") or "-",
                     step, loss, _fmt_s(r.get("eta_s"))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    counts = ", ".join(f"{k.lower()} {v}" for k, v in sorted(snap.get("counts", {}).items()))
    retries = sum(int(r.get("retries") or 0) for r in snap["trials"])
    counts += f", {retries} retr{'y' if retries == 1 else 'ies'}" if retries else ""
    lines.append(f"[{counts}; study ETA {_fmt_s(snap.get('eta_s'))}]")
    return "\n".join(lines)


def render_progress(study_dir: str | Path) -> str:
    """The trial table of a study from its ``progress.json`` (empty-study message if none yet)."""
    from coloc_ray.storage import Storage

    store = Storage(study_dir)
    if not store.is_file(PROGRESS):
        return f"{study_dir}: no progress yet (no trials started)"
    return format_table(store.read_json(PROGRESS))
