"""Run untrusted, model-generated Python programs (HumanEval, MBPP, GSM8K-as-code) in a sandbox.

Nothing is ever ``exec``-ed in-process. Each program is written to a fresh temporary directory
and run by a new interpreter in isolated mode (``python -I -S -B -u -X utf8``: no site, no user
site, no PYTHON* variables, no .pyc writes) with that directory as its working directory.

Process layout (Linux)::

    caller ── supervisor (python -I -S this file, own session/process group)
                └─ init (pid 1 of a new pid namespace when one can be made; else a subreaper)
                     └─ program (rlimits, privileges dropped, no-new-privs, then exec python)

* **Namespaces.** The supervisor calls ``unshare(2)`` (``os.unshare`` on 3.12+, ctypes
  otherwise) for a new network, pid, mount and IPC namespace; when not root it first makes a
  user namespace that maps only its own uid. Each one is tried separately, and what worked is
  reported in ``SandboxResult.isolation``; nothing fails when the OS refuses (for example a
  Docker container under the default seccomp profile): the program then runs with fewer walls.
  The ``unshare`` binary of util-linux is not used: it hits the same kernel checks.
* **Network.** In a new network namespace there is no interface but a loopback that is down:
  every connect fails, 127.0.0.1 included. ``network_isolated`` is True only then.
* **Processes.** In a pid namespace the init is pid 1; when the program ends, or the parent
  signals a timeout, init exits and the kernel kills every process left in the namespace,
  double-forked and ``setsid()``-ed ones included, before the supervisor sees init exit.
  Without one, init is a ``PR_SET_CHILD_SUBREAPER``: orphans are reparented to it, and it kills
  its whole descendant tree (found by scanning /proc) until nothing is left. Each process dies
  with its parent (``PR_SET_PDEATHSIG``), so killing the caller tears the chain down too.
* **Filesystem.** In a mount namespace (private propagation) /tmp, /var/tmp, /dev/shm, /run,
  /dev/mqueue get fresh small tmpfs mounts; the working directory becomes a private tmpfs of
  ``file_size_bytes`` + 1 MiB at the same path; a new /proc shows only the sandbox's
  processes; every other mount is remounted read-only (once the tmpfs working directory is in
  place). When the interpreter lives under a
  directory that ``nobody`` cannot enter (pyenv under /root), that directory is covered by a
  tmpfs holding only a bind mount of the interpreter, which also hides the rest of it.
* **Privileges.** Run as root, the program drops to uid/gid 65534 (nobody) with no
  supplementary groups before exec, so it cannot signal the caller, cannot write root's files
  and is subject to RLIMIT_NPROC (which the kernel does not enforce for root). Not root, the
  program keeps the caller's uid; with a pid namespace the caller is invisible to it, without
  one a same-uid program can signal the caller (and every other process of that uid).
* **Limits.** RLIMIT_CPU (SIGXCPU, then SIGKILL one second later: status "timeout"), RLIMIT_AS,
  RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_NPROC, no core files, oom_score_adj 1000. The wall limit is
  measured by the caller. Output is read as it comes; past ``output_bytes`` (stdout and stderr
  together) the program is stopped and the status is "output_limit", so the caller's memory
  never holds more than that.
* **Environment.** Only PATH, LANG, LC_ALL, HOME and TMPDIR (the last two: the working
  directory); the caller's variables (secrets) are not passed, not even to the supervisor.

``SandboxResult.isolation`` lists what was really in effect, from these tags: always "rlimits",
"session", "tmpdir", "env-scrubbed", "isolated-interpreter", "no-new-privs"; then "userns",
"netns", "pidns", "mountns", "ipcns" (namespaces made), "subreaper" (no pid namespace),
"mountns-private", "private-tmp", "hidden:/DIR", "tmpfs-workdir", "readonly-root",
"private-proc" (mounts made), "setuid nobody" or, as root without it, "running-as-root".
A run costs about 50 ms of overhead.

What this sandbox does NOT protect against:

* kernel or hardware exploits (no seccomp filter, no VM): a program that gets root in the
  kernel owns the machine;
* reading world-readable files (/etc, /usr, /sys, the repo if its modes allow it), and, without
  a pid namespace and a private /proc, other processes' command lines;
* CPU-time, cache, memory-bandwidth or timing side channels, and the load it puts on the
  machine within its limits (on two cores a fork bomb slows everything until the wall limit);
* the network when no network namespace could be made (``network_isolated`` is False), and
  Unix sockets in directories that are not masked when no mount namespace could be made;
* writes to world-writable places and disk filling when no mount namespace could be made
  (only the per-file size is limited then), and, when not root and without "readonly-root",
  anything the caller's uid may write (no privilege drop is possible then);
* when not root: signals to the caller (and its other processes) without a pid namespace, and
  reading their /proc/PID/environ (the caller's secrets) without a private /proc;
* RLIMIT_NPROC counts every process of the uid on the host: as root (uid 65534) concurrent
  sandboxes share that budget, so a fork bomb in one can make a concurrent program's fork fail;
  not root, the caller's own processes are counted and added to ``processes``;
* memory across processes: RLIMIT_AS is per process, so ``processes`` x ``memory_bytes`` is
  the real ceiling (no cgroup is used);
* tmpfs pages (up to about 5 x ``file_size_bytes``) are not charged to RLIMIT_AS;
* root without a usable privilege drop (no CAP_SETUID, or an interpreter that nobody cannot
  reach and no mount namespace): the program then runs as root, ``isolation`` says
  "running-as-root" and a warning is issued.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import re
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Callable, NoReturn

__all__ = [
    "SandboxLimits",
    "SandboxResult",
    "check_program",
    "isolation_available",
    "run_python",
]


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one sandboxed program."""

    wall_seconds: float = 10.0
    cpu_seconds: float = 10.0
    memory_bytes: int = 1 << 30  # RLIMIT_AS
    file_size_bytes: int = 16 << 20  # RLIMIT_FSIZE
    open_files: int = 64  # RLIMIT_NOFILE
    processes: int = 32  # RLIMIT_NPROC (plus a pid namespace when available)
    output_bytes: int = 1 << 20  # stdout + stderr kept; past this the program is stopped


@dataclass(frozen=True)
class SandboxResult:
    """What one sandboxed run did, and under which isolation."""

    status: str  # "ok", "error", "timeout", "killed", "output_limit"
    returncode: int | None  # exit code, -signal, or None when the sandbox stopped it
    stdout: str
    stderr: str
    wall_seconds: float
    network_isolated: bool  # a new network namespace really was in effect
    isolation: tuple[str, ...]  # the mechanisms that were in effect

    @property
    def passed(self) -> bool:
        """True when the program exited with status 0 within its limits."""
        return self.status == "ok"


PROGRAM_NAME = "main.py"
NOBODY = 65534
_MiB = 1 << 20
_STREAM_GRACE = 0.5  # seconds to drain pipes after the program is gone
_MASK_CANDIDATES = ("/tmp", "/var/tmp", "/dev/shm", "/run", "/var/lock", "/dev/mqueue")
_PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm")
_SUPERVISOR_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_REC, MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 16384, 1 << 18, 1 << 21, 1 << 24
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
_NAMESPACES = (("netns", CLONE_NEWNET), ("pidns", CLONE_NEWPID), ("mountns", CLONE_NEWNS), ("ipcns", CLONE_NEWIPC))
_MOUNT_OPTION_FLAGS = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
    "strictatime": MS_STRICTATIME,
}


# ----------------------------------------------------------------------------- public API


def run_python(source: str, limits: SandboxLimits | None = None, stdin: str = "") -> SandboxResult:
    """Run `source` as a Python program in the sandbox and report how it ended."""
    return _run(source, limits or SandboxLimits(), stdin, namespaces=True)


def check_program(program: str, test: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run `program` followed by `test` (HumanEval/MBPP asserts); passed == every assert held."""
    return run_python(program + "\n" + test, limits)


@lru_cache(maxsize=1)
def isolation_available() -> dict[str, bool]:
    """Which isolation mechanisms this OS allows, probed once in a throwaway process."""
    keys = ("rlimits", "setuid", "userns", "netns", "pidns", "mountns", "ipcns", "subreaper",
            "no_new_privs", "unshare_binary")
    found: dict[str, Any] = {}
    try:
        done = subprocess.run(_interpreter_command("--probe"), capture_output=True, timeout=60,
                              env=_SUPERVISOR_ENV, cwd="/", check=False)
        found = json.loads(done.stdout.decode() or "{}")
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    return {key: bool(found.get(key, False)) for key in keys}


# ----------------------------------------------------------------------------- caller side


def _run(source: str, limits: SandboxLimits, stdin: str, namespaces: bool) -> SandboxResult:
    """Make the working directory, run the program in it, then delete it."""
    workdir = tempfile.mkdtemp(prefix="slm-sandbox-")
    try:
        _prepare_workdir(workdir, source)
        return _execute(workdir, limits, stdin, namespaces)
    finally:
        _remove_tree(workdir)


def _prepare_workdir(workdir: str, source: str) -> None:
    """Write the program; when root, hand the directory to nobody."""
    path = os.path.join(workdir, PROGRAM_NAME)
    with open(path, "w", encoding="utf-8", errors="replace") as handle:
        handle.write(source)
    os.chmod(path, 0o644)
    if os.geteuid() == 0:
        os.chown(workdir, NOBODY, NOBODY)
        os.chown(path, NOBODY, NOBODY)


def _remove_tree(path: str) -> None:
    """Delete the working directory, even one the program made unreadable (never following links)."""
    shutil.rmtree(path, ignore_errors=True)
    if not os.path.lexists(path):
        return
    for root, dirs, _files in os.walk(path):
        for name in dirs:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                _quietly(os.chmod, full, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def _interpreter() -> str:
    """The real interpreter binary (not a venv symlink): the program runs without site anyway."""
    return os.path.realpath(sys.executable)


def _interpreter_command(*args: str) -> list[str]:
    """Command line that runs this file as a script in isolated mode."""
    return [_interpreter(), "-I", "-S", "-B", os.path.abspath(__file__), *args]


def _execute(workdir: str, limits: SandboxLimits, stdin: str, namespaces: bool) -> SandboxResult:
    """Start the supervisor, pump its pipes within the limits, stop it and build the result."""
    info_r, info_w = os.pipe()
    cfg = _build_config(limits, workdir, info_w, namespaces)
    start = time.monotonic()
    with tempfile.TemporaryFile() as stdin_file:
        stdin_file.write(stdin.encode("utf-8", "replace"))
        stdin_file.seek(0)
        try:
            proc = subprocess.Popen(
                _interpreter_command("--supervise", json.dumps(cfg)), stdin=stdin_file,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(info_w,), cwd=workdir,
                env=_SUPERVISOR_ENV, start_new_session=True)
        except BaseException:
            os.close(info_r)
            raise
        finally:
            os.close(info_w)
        pump = _Pump(proc, info_r, limits.output_bytes)
        reason: str | None = "interrupted"
        try:
            reason = pump.run(start + limits.wall_seconds)
            if reason is not None:
                _stop(proc)
                pump.drain(time.monotonic() + _STREAM_GRACE)
        finally:
            if reason == "interrupted":  # an exception (e.g. KeyboardInterrupt) in the caller
                _stop(proc)
            _finish(proc)
            pump.close()
    return _result(pump, reason, limits, time.monotonic() - start)


def _build_config(limits: SandboxLimits, workdir: str, info_fd: int, namespaces: bool) -> dict[str, Any]:
    """Everything the supervisor, init and program need, as JSON-able data."""
    exe = _interpreter()
    root = os.geteuid() == 0
    needed = _interpreter_paths(exe)
    return {
        "parent_pid": os.getpid(),
        "info_fd": info_fd,
        "workdir": workdir,
        "exe": exe,
        "argv": [exe, "-I", "-S", "-B", "-u", "-X", "utf8", PROGRAM_NAME],
        "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
                "HOME": workdir, "TMPDIR": workdir},
        "limits": asdict(limits),
        "root": root,
        "uid": os.getuid(),
        "gid": os.getgid(),
        "run_uid": NOBODY if root else os.getuid(),
        "run_gid": NOBODY if root else os.getgid(),
        "nproc_base": 0 if root else _count_processes(os.getuid()),
        "namespaces": namespaces,
        "masks": _mask_targets(needed),
        "reach": _hidden_ancestors(needed) if root else [],
        "check_paths": [exe, os.path.realpath(os.__file__)],
    }


def _count_processes(uid: int) -> int:
    """Processes (threads included) of `uid`: RLIMIT_NPROC counts them all, so the budget adds to this."""
    count = 0
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/status", encoding="ascii", errors="replace") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:
            continue
        if int(fields.get("Uid", "-1 0").split()[0]) == uid:
            count += int(fields.get("Threads", "1"))
    return count


def _interpreter_paths(exe: str) -> list[str]:
    """Directories the interpreter needs (binary, stdlib, shared libraries), outermost only."""
    paths = {os.path.dirname(exe), os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}
    return sorted(p for p in paths if not any(_is_under(p, q) and p != q for q in paths))


def _is_under(path: str, top: str) -> bool:
    """True when `path` is `top` or inside it."""
    return path == top or path.startswith(top.rstrip("/") + "/")


def _mask_targets(needed: list[str]) -> list[str]:
    """World-writable / shared directories to cover with a private tmpfs (none holding the interpreter)."""
    chosen: list[str] = []
    for candidate in _MASK_CANDIDATES:
        real = os.path.realpath(candidate)
        if not os.path.isdir(real) or real == "/" or any(_is_under(real, m) for m in chosen):
            continue
        if any(_is_under(path, real) for path in needed):
            continue
        chosen.append(real)
    return chosen


def _hidden_ancestors(needed: list[str]) -> list[list[str]]:
    """[top, path] for each needed path below a directory that others cannot enter (e.g. /root)."""
    plan = []
    for path in needed:
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts)):
            top = "/" + "/".join(parts[:depth])
            try:
                blocked = not os.stat(top).st_mode & 0o001
            except OSError:
                break
            if blocked:
                plan.append([top, path])
                break
    return plan


class _Pump:
    """Reads the program's stdout/stderr (bounded) and the supervisor's event pipe."""

    def __init__(self, proc: subprocess.Popen, info_r: int, cap: int) -> None:
        self.proc = proc
        self.cap = cap
        self.kept = 0
        self.info_r = info_r
        self.out = bytearray()
        self.err = bytearray()
        self.info = bytearray()
        self.overflow = False
        assert proc.stdout is not None and proc.stderr is not None
        self.buffers = {proc.stdout.fileno(): self.out, proc.stderr.fileno(): self.err, info_r: self.info}
        self.selector = selectors.DefaultSelector()
        for fd in self.buffers:
            self.selector.register(fd, selectors.EVENT_READ)

    def run(self, deadline: float) -> str | None:
        """Pump until the program is done; "wall" or "output" when it must be stopped."""
        while self.info_r in self.buffers:
            if not self._step(deadline):
                return "wall"
            if self.overflow:
                return "output"
        self.drain(time.monotonic() + _STREAM_GRACE)
        return "output" if self.overflow else None

    def drain(self, deadline: float) -> None:
        """Read what is left in the pipes until they close or `deadline` passes."""
        while self.buffers and self._step(deadline):
            pass

    def _step(self, deadline: float) -> bool:
        """One select round; False when `deadline` has passed."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        for key, _events in self.selector.select(remaining):
            self._read(key.fd)
        return True

    def _read(self, fd: int) -> None:
        """Read one chunk from `fd`, keeping output within the cap."""
        data = os.read(fd, 1 << 16)
        buffer = self.buffers[fd]
        if not data:
            self.selector.unregister(fd)
            del self.buffers[fd]
        elif fd == self.info_r:
            buffer += data[: max(0, (1 << 16) - len(buffer))]
        else:
            room = max(0, self.cap - self.kept)
            buffer += data[:room]
            self.kept += min(room, len(data))
            self.overflow = self.overflow or len(data) > room

    def events(self) -> list[dict[str, Any]]:
        """The supervisor's events, one JSON object a line."""
        events = []
        for line in bytes(self.info).decode("utf-8", "replace").splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events

    def close(self) -> None:
        """Close every pipe end the caller holds."""
        self.selector.close()
        _quietly(os.close, self.info_r)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _stop(proc: subprocess.Popen) -> None:
    """Ask the supervisor to end the sandbox: it kills init, which takes everything with it.

    Not proc.poll()/send_signal: they reap, and the supervisor's pid must stay reserved until
    its process group has been killed in _finish.
    """
    if not _exited(proc.pid):
        _quietly(os.kill, proc.pid, signal.SIGTERM)


def _finish(proc: subprocess.Popen) -> None:
    """Wait for the supervisor (a few seconds at most), kill its process group, reap it."""
    deadline = time.monotonic() + 5.0
    while not _exited(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.005)
    # The supervisor is a zombie at worst here, so its pid (= its group id) cannot be reused yet.
    _quietly(os.killpg, proc.pid, signal.SIGKILL)
    proc.wait()


def _exited(pid: int) -> bool:
    """True when child `pid` has exited, without reaping it."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _result(pump: _Pump, reason: str | None, limits: SandboxLimits, wall: float) -> SandboxResult:
    """Turn what the pump saw into a SandboxResult."""
    events = pump.events()
    status, returncode = _classify(reason, _last(events, "exit"), limits)
    isolation = _isolation(events)
    problems = "".join(f"slmkit sandbox: {e['message']}\n" for e in events if e.get("event") == "init_error")
    return SandboxResult(
        status=status, returncode=returncode,
        stdout=bytes(pump.out).decode("utf-8", "replace"),
        stderr=bytes(pump.err).decode("utf-8", "replace") + problems,
        wall_seconds=wall, network_isolated="netns" in isolation, isolation=isolation)


def _last(events: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The last event called `name`, if any."""
    found = [event for event in events if event.get("event") == name]
    return found[-1] if found else None


def _classify(reason: str | None, exit_event: dict[str, Any] | None,
              limits: SandboxLimits) -> tuple[str, int | None]:
    """(status, returncode) from why the caller stopped and how the program ended."""
    returncode = _returncode(exit_event)
    if reason == "output":
        return "output_limit", returncode
    if reason == "wall":
        return "timeout", returncode
    if exit_event is None:
        return "killed", None
    status = exit_event["status"]
    if os.WIFEXITED(status):
        return ("ok" if returncode == 0 else "error"), returncode
    sig = os.WTERMSIG(status)
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and exit_event["cpu"] >= limits.cpu_seconds):
        return "timeout", returncode
    return "killed", returncode


def _returncode(exit_event: dict[str, Any] | None) -> int | None:
    """Exit code, or -signal, as subprocess reports it."""
    if exit_event is None:
        return None
    status = exit_event["status"]
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)


def _isolation(events: list[dict[str, Any]]) -> tuple[str, ...]:
    """The isolation tags that were really in effect, from the supervisor's reports."""
    tags = ["rlimits", "session", "tmpdir", "env-scrubbed", "isolated-interpreter"]
    for event in events:
        if event.get("event") == "ns":
            tags.extend(event["tags"])
    program = _last(events, "program")
    if program is not None:
        tags.extend(program["tags"])
        if os.geteuid() == 0 and "setuid nobody" not in program["tags"]:
            tags.append("running-as-root")
            warnings.warn("sandbox: the program ran as root (no privilege drop possible here)",
                          RuntimeWarning, stacklevel=4)
    return tuple(dict.fromkeys(tags))


# ----------------------------------------------------------------------------- kernel helpers


_LIBC: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    """The C library, with argument types for the calls used here."""
    global _LIBC
    if _LIBC is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        libc.unshare.argtypes = [ctypes.c_int]
        _LIBC = libc
    return _LIBC


def _check(result: int, what: str) -> None:
    """Raise OSError from errno when a libc call failed."""
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _unshare(flags: int) -> None:
    """unshare(2): os.unshare on Python 3.12+, libc otherwise."""
    if hasattr(os, "unshare"):
        os.unshare(flags)
    else:
        _check(_libc().unshare(flags), "unshare")


def _prctl(option: int, value: int) -> None:
    """prctl(2) with one argument."""
    _check(_libc().prctl(option, value, 0, 0, 0), "prctl")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    """mount(2)."""
    _check(_libc().mount(_c(source), _c(target), _c(fstype), flags, _c(data)), f"mount {target}")


def _c(text: str | None) -> bytes | None:
    """A str as a C string argument (None stays NULL)."""
    return None if text is None else text.encode()


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    """Call fn(*args), ignoring OSError (best-effort cleanup)."""
    try:
        fn(*args)
    except OSError:
        pass


def _emit(cfg: dict[str, Any], **event: Any) -> None:
    """Report one event to the caller (one line, atomic below PIPE_BUF)."""
    _quietly(os.write, cfg["info_fd"], (json.dumps(event) + "\n").encode())


def _write_file(path: str, text: str) -> None:
    """Write `text` to an existing file (procfs knobs)."""
    with open(path, "w", encoding="ascii") as handle:
        handle.write(text)


# ----------------------------------------------------------------------------- supervisor


def _supervisor(cfg: dict[str, Any]) -> NoReturn:
    """Enter the namespaces, fork init, forward a stop request to it, exit once it is gone."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != cfg["parent_pid"]:
        os._exit(1)
    tags = _enter_namespaces(cfg) if cfg["namespaces"] else []
    _emit(cfg, event="ns", tags=tags)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # until _wait_init can forward it
    pid = os.fork()
    if pid == 0:
        _init(cfg, tags)
    _wait_init(pid, signal.SIGKILL if "pidns" in tags else signal.SIGTERM)
    os._exit(0)


def _wait_init(pid: int, stop_signal: int) -> None:
    """Wait for init; a SIGTERM from the caller becomes `stop_signal` to init (never to a reused pid)."""
    alive = [True]

    def forward(_signum: int, _frame: object) -> None:
        if alive[0]:
            _quietly(os.kill, pid, stop_signal)

    signal.signal(signal.SIGTERM, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    try:  # WNOWAIT: init stays a zombie, so its pid is still ours while `forward` may run
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    alive[0] = False
    _quietly(os.waitpid, pid, 0)


def _enter_namespaces(cfg: dict[str, Any]) -> list[str]:
    """unshare each namespace that the OS allows; return the tags of those now in effect."""
    tags = []
    if not cfg["root"]:
        try:
            _enter_user_namespace(cfg["uid"], cfg["gid"])
            tags.append("userns")
        except OSError:
            return tags
    for name, flag in _NAMESPACES:
        try:
            _unshare(flag)
            tags.append(name)
        except OSError:
            continue
    return tags


def _enter_user_namespace(uid: int, gid: int) -> None:
    """New user namespace mapping only our own uid/gid (to themselves: no root inside)."""
    _unshare(CLONE_NEWUSER)
    _write_file("/proc/self/setgroups", "deny")
    _write_file("/proc/self/uid_map", f"{uid} {uid} 1\n")
    _write_file("/proc/self/gid_map", f"{gid} {gid} 1\n")


# ----------------------------------------------------------------------------- init


class _Stop(Exception):
    """Raised in init by SIGTERM / SIGALRM: end the sandbox now."""


def _raise_stop(_signum: int, _frame: object) -> None:
    raise _Stop


def _init(cfg: dict[str, Any], tags: list[str]) -> NoReturn:
    """Pid 1 of the sandbox (or a subreaper): set up mounts, run the program, kill what is left."""
    pidns = "pidns" in tags
    try:
        os.umask(0o022)
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL if pidns else signal.SIGTERM)
        _prctl(PR_SET_DUMPABLE, 0)
        signal.signal(signal.SIGTERM, _raise_stop)
        signal.signal(signal.SIGALRM, _raise_stop)
        signal.alarm(int(cfg["limits"]["wall_seconds"]) + 10)  # backstop if the caller vanished
        more = _init_tags(pidns) + (_setup_mounts(cfg, pidns) if "mountns" in tags else [])
        _emit(cfg, event="ns", tags=more)
        child = _spawn_program(cfg)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        status, cpu = _wait_program(child)
        _emit(cfg, event="exit", status=status, cpu=cpu)
    except _Stop:
        pass
    except BaseException as exc:  # noqa: BLE001 - report, then still clean up
        _emit(cfg, event="init_error", message=repr(exc))
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGALRM})
        if not pidns:  # with a pid namespace the kernel kills everything when init exits
            _kill_descendants()
        os._exit(0)


def _init_tags(pidns: bool) -> list[str]:
    """Without a pid namespace, become a subreaper so escaped orphans stay ours."""
    if pidns:
        return []
    try:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        return ["subreaper"]
    except OSError:
        return []


def _spawn_program(cfg: dict[str, Any]) -> int:
    """Fork the program with init's signals blocked, so no init handler ever runs in it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGALRM})
    pid = os.fork()
    if pid == 0:
        _exec_program(cfg)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
    return pid


def _wait_program(child: int) -> tuple[int, float]:
    """Reap children (orphans too) until the program ends: (wait status, its CPU seconds)."""
    while True:
        pid, status, usage = os.wait4(-1, 0)
        if pid == child:
            return status, usage.ru_utime + usage.ru_stime


def _kill_descendants() -> None:
    """SIGKILL every descendant (found in /proc), reap, repeat until none is left (5 s at most)."""
    me = os.getpid()
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        for pid in _descendants(me):
            _quietly(os.kill, pid, signal.SIGKILL)
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return
        time.sleep(0.01)


def _descendants(root: int) -> list[int]:
    """All processes below `root`, from one scan of /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            ppid = _ppid(int(name))
            if ppid is not None:
                children.setdefault(ppid, []).append(int(name))
    found, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            found.append(pid)
            todo.append(pid)
    return found


def _ppid(pid: int) -> int | None:
    """Parent pid of `pid` from /proc/PID/stat, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    return int(stat.rsplit(b")", 1)[1].split()[1])


# ----------------------------------------------------------------------------- mounts (in init)


def _setup_mounts(cfg: dict[str, Any], pidns: bool) -> list[str]:
    """Private /tmp & co, reachable interpreter, tmpfs workdir, own /proc, read-only rest."""
    try:
        _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below may propagate to the host
    except OSError:
        return []
    tags = ["mountns-private"]
    masked = _mask_dirs(cfg)
    if all(_covered(path, masked) for path in _PRIVATE_TMP):
        tags.append("private-tmp")
    tags += [f"hidden:{top}" for top in _expose_interpreter(cfg["reach"])]
    writable = set(masked)
    if _tmpfs_workdir(cfg):
        tags.append("tmpfs-workdir")
        writable.add(cfg["workdir"])
        if _remount_readonly(writable):
            tags.append("readonly-root")
    if pidns and _mount_proc():
        tags.append("private-proc")
    return tags


def _covered(path: str, masked: list[str]) -> bool:
    """True when `path` does not exist or lies in a masked directory."""
    real = os.path.realpath(path)
    return not os.path.isdir(real) or any(_is_under(real, top) for top in masked)


def _tmpfs(target: str, options: str) -> None:
    """Mount a fresh tmpfs (nosuid, nodev) on `target`."""
    _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, options)


def _mask_dirs(cfg: dict[str, Any]) -> list[str]:
    """Cover world-writable and shared directories with small private tmpfs mounts."""
    size = cfg["limits"]["file_size_bytes"]
    masked = []
    for target in cfg["masks"]:
        mode = "0755" if target == "/run" else "1777"
        try:
            _tmpfs(target, f"size={size},nr_inodes=4096,mode={mode}")
            masked.append(target)
        except OSError:
            continue
    return masked


def _expose_interpreter(reach: list[list[str]]) -> list[str]:
    """Cover each directory nobody cannot enter (e.g. /root) with a tmpfs holding only the interpreter."""
    groups: dict[str, list[str]] = {}
    for top, path in reach:
        groups.setdefault(top, []).append(path)
    done = []
    for top, paths in groups.items():
        fds = [os.open(path, os.O_PATH | os.O_DIRECTORY) for path in paths]
        try:
            _tmpfs(top, "size=1m,nr_inodes=1024,mode=0755")
            for path, fd in zip(paths, fds):
                os.makedirs(path, mode=0o755, exist_ok=True)
                _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            done.append(top)
        except OSError:
            continue
        finally:
            for fd in fds:
                os.close(fd)
    return done


def _tmpfs_workdir(cfg: dict[str, Any]) -> bool:
    """Replace the working directory by a size-limited tmpfs at the same path holding the program."""
    workdir = cfg["workdir"]
    try:
        with open(PROGRAM_NAME, "rb") as handle:  # cwd is still the real directory
            source = handle.read()
        os.makedirs(workdir, mode=0o755, exist_ok=True)
        size = cfg["limits"]["file_size_bytes"] + _MiB
        _tmpfs(workdir, f"size={size},nr_inodes=4096,mode=0700,uid={cfg['run_uid']},gid={cfg['run_gid']}")
        os.chdir(workdir)
        with open(PROGRAM_NAME, "wb") as handle:
            handle.write(source)
        os.chown(PROGRAM_NAME, cfg["run_uid"], cfg["run_gid"])
        return True
    except OSError:
        return False


def _mount_proc() -> bool:
    """Mount a /proc that shows only this pid namespace."""
    try:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        return True
    except OSError:
        return False


def _remount_readonly(writable: set[str]) -> bool:
    """Remount every mount but `writable` (and procfs) read-only; True when / itself is."""
    root_done = False
    for target, options, fstype in _mounts():
        if target in writable or fstype == "proc":
            continue
        flags = MS_BIND | MS_REMOUNT | MS_RDONLY
        for option in options.split(","):
            flags |= _MOUNT_OPTION_FLAGS.get(option, 0)
        try:
            _mount(None, target, None, flags)
            root_done = root_done or target == "/"
        except OSError:
            continue
    return root_done


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, per-mount options, fs type) from /proc/self/mountinfo."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            parts = line.split()
            if "-" in parts:
                found.append((_unescape(parts[4]), parts[5], parts[parts.index("-") + 1]))
    return found


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (space = \\040 ...)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


# ----------------------------------------------------------------------------- program (in init's child)


def _exec_program(cfg: dict[str, Any]) -> NoReturn:
    """Drop privileges, set limits, close every other fd and exec the interpreter on the program."""
    try:
        for sig in (signal.SIGTERM, signal.SIGALRM, signal.SIGINT, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        signal.alarm(0)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        tags = ["setuid nobody"] if cfg["root"] and _drop_privileges(cfg) else []
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after setuid, which clears it
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        tags.append("no-new-privs")
        _quietly(_write_file, "/proc/self/oom_score_adj", "1000")
        _emit(cfg, event="program", tags=tags)
        os.closerange(3, 1 << 20)
        _set_rlimits(cfg["limits"], cfg["nproc_base"])
        os.execve(cfg["exe"], cfg["argv"], cfg["env"])
    except BaseException as exc:  # noqa: BLE001 - never fall back into init's code
        _quietly(os.write, 2, f"slmkit sandbox: could not start the program: {exc!r}\n".encode())
    os._exit(125)


def _drop_privileges(cfg: dict[str, Any]) -> bool:
    """Become nobody (no groups) when nobody can run the interpreter; verify root is gone."""
    uid, gid = cfg["run_uid"], cfg["run_gid"]
    try:
        os.setgroups([])
        if not _reachable_as(uid, gid, cfg["check_paths"]):
            return False
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError:
        return False
    try:
        os.setuid(0)
    except PermissionError:
        return True
    raise RuntimeError("privilege drop did not hold")


def _reachable_as(uid: int, gid: int, paths: list[str]) -> bool:
    """True when uid/gid may read (and run) `paths`; checked with effective ids, then restored."""
    os.setegid(gid)
    os.seteuid(uid)
    try:
        return all(os.access(path, os.R_OK | os.X_OK if i == 0 else os.R_OK, effective_ids=True)
                   for i, path in enumerate(paths))
    finally:
        os.seteuid(0)
        os.setegid(0)


def _set_rlimits(limits: dict[str, Any], nproc_base: int) -> None:
    """CPU, address space, file size, open files, processes (beyond `nproc_base`), no core dumps."""
    cpu = max(1, math.ceil(limits["cpu_seconds"]))
    wanted = {
        resource.RLIMIT_CPU: (cpu, cpu + 1),
        resource.RLIMIT_AS: (limits["memory_bytes"],) * 2,
        resource.RLIMIT_FSIZE: (limits["file_size_bytes"],) * 2,
        resource.RLIMIT_NOFILE: (limits["open_files"],) * 2,
        resource.RLIMIT_NPROC: (nproc_base + limits["processes"],) * 2,
        resource.RLIMIT_CORE: (0, 0),
    }
    for res, (soft, hard) in wanted.items():
        _, current_hard = resource.getrlimit(res)
        if current_hard != resource.RLIM_INFINITY:
            hard = min(hard, current_hard)
        resource.setrlimit(res, (min(soft, hard), hard))


# ----------------------------------------------------------------------------- probe


def _probe() -> dict[str, bool]:
    """Try each mechanism in a throwaway child process."""
    root = os.geteuid() == 0
    found = {"rlimits": True, "unshare_binary": shutil.which("unshare") is not None}
    user = (lambda: None) if root else (lambda: _enter_user_namespace(os.getuid(), os.getgid()))
    found["userns"] = _in_child(lambda: _unshare(CLONE_NEWUSER))
    for name, flag in _NAMESPACES:
        found[name] = _in_child(lambda flag=flag: (user(), _unshare(flag)))
    found["setuid"] = root and _in_child(lambda: (os.setgroups([]), os.setresgid(NOBODY, NOBODY, NOBODY),
                                                  os.setresuid(NOBODY, NOBODY, NOBODY)))
    found["subreaper"] = _in_child(lambda: _prctl(PR_SET_CHILD_SUBREAPER, 1))
    found["no_new_privs"] = _in_child(lambda: _prctl(PR_SET_NO_NEW_PRIVS, 1))
    return found


def _in_child(fn: Callable[[], object]) -> bool:
    """Run fn in a forked child; True when it returned without raising."""
    pid = os.fork()
    if pid == 0:
        try:
            fn()
        except BaseException:  # noqa: BLE001
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def _main(argv: list[str]) -> None:
    """Entry point when this file runs as the supervisor or the probe."""
    if argv[:1] == ["--probe"]:
        print(json.dumps(_probe()))
    elif argv[:1] == ["--supervise"] and len(argv) == 2:
        _supervisor(json.loads(argv[1]))
    else:
        sys.exit("usage: sandbox.py --probe | --supervise CONFIG")


if __name__ == "__main__":
    _main(sys.argv[1:])
