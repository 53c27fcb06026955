"""Run untrusted (model-written) code in an isolated child process. Standard library only.

EvalPlus's ``reliability_guard`` calls itself "NOT a security sandbox": it sets ``os.fork`` & co. to None, which
``import posix; posix.fork()`` walks around. So the whole EvalPlus worker runs inside a child that this module
isolates with the kernel's own tools, before the first line of generated code can run:

- **no network**: its own network namespace with no interface up, so even 127.0.0.1 is unreachable;
- **no user files**: its own mount namespace; empty private tmpfs over ``/tmp``, ``/var/tmp``, ``/dev/shm``,
  ``/root``, ``/home``, ``$HOME``, the checkout and the data dir; only the private work dir (read-write) and the
  Python installation (read-only) are put back at their own paths;
- **no privileges**: uid/gid ``nobody`` with no supplementary groups and ``no_new_privs``, so root-only files
  (the Ray token, 0600) and other processes' environments stay unreadable and nothing can be signalled;
- **scrubbed environment**: only what the program needs, ``HOME`` = the work dir (no token, no key, no proxy);
- **limits**: ``RLIMIT_CPU``, ``RLIMIT_AS``, ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE``, no core files; the parent adds
  a wall-clock limit and kills the child's whole process group. (The process that runs the generated code also
  gets ``RLIMIT_NPROC`` 0, set by ``evalplus_worker``: it cannot start a process or thread.)

The uid change needs root (as in the project's CI). A non-root user gets the namespaces inside a user namespace
of its own where the kernel allows that (most Linux hosts; not under Docker's default seccomp profile), and runs
the code as itself. Whatever is missing, the child still gets the scrubbed environment, private work dir and
limits, and :func:`run_sandboxed` logs a WARNING naming each missing layer (``COLOC_SANDBOX=strict`` turns that
warning into an error).

The parent starts ``python -I -B sandbox.py SPEC`` (this file, run by path: it imports nothing of coloc_ray);
``SPEC`` is a JSON file: ``{argv, env, workdir, hide, expose_ro, uid, gid, limits}``. The launcher writes what
it achieved to ``<workdir>/isolation.json`` before it drops privileges and ``exec``s ``argv``.
"""

from __future__ import annotations

import json
import os
import sys

ISOLATION = "isolation.json"
CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWUSER = 0x00020000, 0x40000000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS = 38
TMP_LIKE = ("/tmp", "/var/tmp", "/dev/shm")
DEFAULT_HIDE = TMP_LIKE + ("/root", "/home", "/run/user", "/mnt", "/media", "/srv")
LAYERS = ("network_namespace", "mount_namespace", "unprivileged_uid", "scrubbed_env", "rlimits")


# ---------------------------------------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------------------------------------

def python_paths() -> list[str]:
    """Directories the child's Python needs to read: the venv and the base installation (as given and real)."""
    out = []
    for p in (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
              os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))):
        for q in (os.path.abspath(p), os.path.realpath(p)):
            if q not in out and q != "/":
                out.append(q)
    return out


def build_spec(argv: list[str], workdir: str, env: dict[str, str], *, hide: list[str] = (),
               cpu_s: int = 900, memory_bytes: int = 6 << 30, file_bytes: int = 256 << 20,
               nofile: int = 512) -> dict:
    """The launcher's spec: what to run, what to hide, what to put back read-only, and the limits."""
    import pwd

    try:
        pw = pwd.getpwnam("nobody")
        uid, gid = pw.pw_uid, pw.pw_gid
    except KeyError:
        uid = gid = 65534
    home = os.path.expanduser("~")
    hidden = list(DEFAULT_HIDE) + [home, os.getcwd()] + list(hide)
    return {"argv": list(argv), "env": dict(env), "workdir": os.path.abspath(workdir),
            "hide": sorted({os.path.realpath(h) for h in hidden if h and os.path.realpath(h) != "/"}),
            "expose_ro": python_paths(), "uid": uid, "gid": gid,
            "limits": {"cpu_s": cpu_s, "memory_bytes": memory_bytes, "file_bytes": file_bytes, "nofile": nofile}}


def run_sandboxed(spec: dict, timeout_s: float, log=None):
    """Start the launcher on ``spec`` and wait (``timeout_s`` wall clock, then the process group is killed).

    Returns:
        ``(returncode, stdout, stderr, isolation)``; ``isolation`` maps each of :data:`LAYERS` to True/False.

    Raises:
        RuntimeError: ``COLOC_SANDBOX=strict`` and a layer is missing.
        TimeoutError: the child ran past ``timeout_s``.
    """
    import signal
    import subprocess

    workdir = spec["workdir"]
    spec_path = os.path.join(workdir, "sandbox_spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    # The launcher itself gets a minimal environment too: nothing of ours leaks through it.
    launcher_env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    proc = subprocess.Popen([sys.executable, "-I", "-B", os.path.abspath(__file__), spec_path], cwd=workdir,
                            env=launcher_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid, signal)
        proc.communicate()
        raise TimeoutError(f"sandboxed child ran past {timeout_s:.0f} s and was killed") from None
    _kill_group(proc.pid, signal)  # stragglers a solution left behind (there should be none)
    iso_path = os.path.join(workdir, ISOLATION)
    isolation = json.load(open(iso_path)) if os.path.isfile(iso_path) else {k: False for k in LAYERS}
    missing = [k for k in LAYERS if not isolation.get(k)]
    if missing:
        msg = (f"generated code ran WITHOUT {', '.join(missing)} ({isolation.get('why', 'launcher failed')}); "
               "run as root (the CI and docker image do) for the full sandbox, docs/SECURITY.md")
        if os.environ.get("COLOC_SANDBOX") == "strict":
            raise RuntimeError(msg)
        if log is not None:
            log.warning(msg)
    return proc.returncode, out, err, isolation


def _kill_group(pid: int, signal) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------------------------------------------------
# Child side (the launcher): runs as the parent's user, isolates itself, drops privileges, execs argv
# ---------------------------------------------------------------------------------------------------------

def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return libc, ctypes


def _check(rc: int, what: str, ctypes) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(libc, ctypes, src, target, fstype, flags, data=None) -> None:
    enc = (lambda s: None if s is None else s.encode())
    _check(libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {target}", ctypes)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _isolate_mounts(libc, ctypes, spec: dict) -> None:
    """Private tmpfs over every hidden path; put the work dir (rw) and the Python paths (ro) back."""
    _mount(libc, ctypes, None, "/", None, MS_REC | MS_PRIVATE)
    hide = [h for h in spec["hide"] if os.path.isdir(h)]
    hide = [h for h in hide if not any(o != h and _under(h, o) for o in hide)]  # outermost only
    keep = [(spec["workdir"], False)] + [(p, True) for p in spec["expose_ro"] if os.path.isdir(p)]
    keep = [(p, ro) for p, ro in keep if any(_under(p, h) for h in hide)]
    fds = [(p, ro, os.open(p, os.O_RDONLY | os.O_DIRECTORY)) for p, ro in keep]  # before they disappear
    for h in hide:
        mode = "1777" if h in TMP_LIKE else "0755"
        _mount(libc, ctypes, "tmpfs", h, "tmpfs", MS_NOSUID | MS_NODEV, f"size=256m,mode={mode}")
    for p, ro, fd in sorted(fds, key=lambda t: len(t[0])):
        os.makedirs(p, exist_ok=True)
        _mount(libc, ctypes, f"/proc/self/fd/{fd}", p, None, MS_BIND | MS_REC)
        if ro:
            # keep the flags the kernel locks in a user namespace (nosuid, nodev, noexec, atime ones)
            kept = os.statvfs(p).f_flag & (MS_NOSUID | MS_NODEV | 8 | 1024 | 2048)
            try:
                _mount(libc, ctypes, None, p, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | kept)
            except OSError:
                pass  # read-write then: it is the Python installation, writable only by its owner anyway
        os.close(fd)


def _enter_userns(libc, ctypes) -> None:
    """New user + mount + network namespaces for a non-root caller, mapping its own uid/gid onto themselves:
    it may mount there (tmpfs, binds) until it execs, then holds no capability at all."""
    uid, gid = os.getuid(), os.getgid()
    _check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET), "unshare(user namespace)", ctypes)
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _set_limits(limits: dict) -> None:
    import resource

    for res, val in ((resource.RLIMIT_CPU, limits["cpu_s"]), (resource.RLIMIT_AS, limits["memory_bytes"]),
                     (resource.RLIMIT_FSIZE, limits["file_bytes"]), (resource.RLIMIT_NOFILE, limits["nofile"]),
                     (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(res, (val, val))


def launch(spec: dict) -> None:
    """Isolate this process as far as the machine allows, record it, drop privileges and exec ``argv``."""
    workdir = spec["workdir"]
    iso = {k: False for k in LAYERS}
    why = []
    libc, ctypes = _libc()
    root = os.geteuid() == 0 and not spec.get("userns")
    try:
        if root:
            _check(libc.unshare(CLONE_NEWNS | CLONE_NEWNET), "unshare", ctypes)
        else:  # an unprivileged user: namespaces of a user namespace of its own, where the kernel allows it
            _enter_userns(libc, ctypes)
        iso["network_namespace"] = True
        _isolate_mounts(libc, ctypes, spec)
        iso["mount_namespace"] = True
    except OSError as e:
        why.append(str(e))
    if root:
        for dirpath, dirs, files in os.walk(workdir):
            for n in [dirpath] + [os.path.join(dirpath, x) for x in dirs + files]:
                os.chown(n, spec["uid"], spec["gid"])
    else:
        why.append("not root: the code runs as this user (its files outside the hidden paths stay readable)")
    _set_limits(spec["limits"])
    iso["rlimits"] = True
    iso["unprivileged_uid"] = root  # the drop below happens before exec, or the launcher exits
    iso["scrubbed_env"] = True  # the env below is the whole environment of the child
    iso["why"] = "; ".join(why) or "complete"
    with open(os.path.join(workdir, ISOLATION), "w") as f:  # written as the parent's user: trusted
        json.dump(iso, f)
    if root:
        os.setgroups([])
        os.setgid(spec["gid"])
        os.setuid(spec["uid"])
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:  # pragma: no cover - would mean the drop did not happen
            raise SystemExit("sandbox: could not drop root")
    os.chdir(workdir)
    os.execve(spec["argv"][0], spec["argv"], spec["env"])


if __name__ == "__main__":
    with open(sys.argv[1]) as _f:
        _spec = json.load(_f)
    os.unlink(sys.argv[1])
    launch(_spec)
