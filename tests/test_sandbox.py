"""The code-benchmark sandbox: results, limits, hostile programs, cleanup and truthful isolation reports."""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from slmkit.eval import sandbox
from slmkit.eval.sandbox import SandboxLimits, SandboxResult, check_program, isolation_available, run_python

FAST = SandboxLimits(wall_seconds=3.0, cpu_seconds=2.0, memory_bytes=512 << 20, processes=16, output_bytes=64 << 10)
REPO = Path(__file__).resolve().parents[1]
SANDBOX_FILE = Path(sandbox.__file__).resolve()


def _marker() -> str:
    return "slm-sbx-" + uuid.uuid4().hex


def _marked(body: str, marker: str) -> str:
    """`body` behind a re-exec that puts `marker` in argv: the program and all its forks carry it in /proc."""
    head = f"""
import os, sys
if {marker!r} not in sys.argv:
    os.execv(sys.executable, [sys.executable, "-I", "-S", "-B", "-u", sys.argv[0], {marker!r}])
"""
    return head + textwrap.dedent(body)


def _survivors(marker: str) -> list[int]:
    """Pids of live processes whose command line carries `marker` (a /proc scan, no psutil)."""
    found = []
    needle = marker.encode()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                if needle in handle.read():
                    found.append(int(name))
        except OSError:
            continue
    return found


def _assert_contained(result: SandboxResult, marker: str) -> None:
    """Scored as failed, nothing left running, and the sandbox still works afterwards."""
    assert result.status != "ok", result
    assert not result.passed
    assert _survivors(marker) == [], f"processes left behind: {result}"
    after = run_python("print(6 * 7)", FAST)
    assert after.passed and after.stdout == "42\n", after


@pytest.fixture(scope="module")
def iso() -> tuple[str, ...]:
    """The isolation a benign run really gets on this machine."""
    result = run_python("pass", FAST)
    assert result.passed, result
    return result.isolation


# ----------------------------------------------------------------------------- ordinary programs


def test_correct_program_passes_and_returns_stdout():
    result = run_python("import sys\nprint('hello', sum(range(10)))\nprint('warn', file=sys.stderr)", FAST)
    assert result.status == "ok" and result.passed and result.returncode == 0
    assert result.stdout == "hello 45\n" and result.stderr == "warn\n"
    assert 0 < result.wall_seconds < FAST.wall_seconds
    assert {"rlimits", "tmpdir", "env-scrubbed"} <= set(result.isolation)


def test_check_program_pass_and_fail():
    program = "def add(a, b):\n    return a + b\n"
    assert check_program(program, "assert add(2, 3) == 5\nassert add(-1, 1) == 0", FAST).passed
    failed = check_program(program, "assert add(2, 2) == 5", FAST)
    assert failed.status == "error" and failed.returncode == 1 and "AssertionError" in failed.stderr


def test_stdin_nonzero_exit_and_syntax_error():
    echoed = run_python("import sys\nprint(sys.stdin.read().upper())", FAST, stdin="abc")
    assert echoed.passed and echoed.stdout == "ABC\n"
    exited = run_python("raise SystemExit(3)", FAST)
    assert exited.status == "error" and exited.returncode == 3
    broken = run_python("def f(:\n", FAST)
    assert broken.status == "error" and "SyntaxError" in broken.stderr


def test_program_sees_isolated_interpreter_and_scrubbed_env():
    result = run_python("import os, sys\nprint(sys.flags.isolated, sys.flags.no_site, sorted(os.environ))", FAST)
    assert result.passed, result
    isolated, no_site, names = result.stdout.split(" ", 2)
    assert isolated == "1" and no_site == "1"
    assert set(eval(names)) <= {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR"}  # noqa: S307 - our own output


# ----------------------------------------------------------------------------- hostile programs


def test_infinite_loop_times_out():
    marker = _marker()
    result = run_python(_marked("while True:\n    pass\n", marker), FAST)
    assert result.status == "timeout", result
    _assert_contained(result, marker)


def test_sleep_past_wall_limit_with_setsid_grandchildren():
    marker = _marker()
    body = """
        import time
        for _ in range(3):
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    time.sleep(60)
                os._exit(0)
        print("started", flush=True)
        time.sleep(60)
    """
    result = run_python(_marked(body, marker), FAST)
    assert result.status == "timeout" and result.stdout == "started\n", result
    assert result.wall_seconds < FAST.wall_seconds + 3
    _assert_contained(result, marker)


def test_children_left_running_are_killed_when_the_program_exits():
    marker = _marker()
    body = """
        import time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(60)
            os._exit(0)
        time.sleep(0.2)
        print("main done")
    """
    result = run_python(_marked(body, marker), FAST)
    assert result.passed and result.stdout == "main done\n", result
    assert _survivors(marker) == []


def test_fork_bomb_is_contained(iso):
    if os.geteuid() == 0 and "setuid nobody" not in iso:
        pytest.skip("root without a privilege drop: RLIMIT_NPROC would not hold")
    marker = _marker()
    body = """
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """
    result = run_python(_marked(body, marker), FAST)
    assert result.status in ("timeout", "killed"), result
    _assert_contained(result, marker)


def test_memory_bomb_is_refused():
    marker = _marker()
    body = """
        try:
            huge = bytearray(10 * 1024 ** 3)
        except MemoryError:
            print("10 GB refused", flush=True)
        hoard = []
        while True:
            hoard.append(bytearray(64 << 20))
    """
    result = run_python(_marked(body, marker), FAST)
    assert result.status in ("error", "killed"), result
    assert "10 GB refused" in result.stdout and "MemoryError" in result.stderr
    _assert_contained(result, marker)


def test_gigabyte_of_output_is_cut_without_buffering_it():
    marker = _marker()
    body = """
        chunk = "x" * (1 << 16)
        for _ in range(1 << 14):
            sys.stdout.write(chunk)
    """
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = run_python(_marked(body, marker), FAST)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert result.status == "output_limit", result.status
    assert len(result.stdout) + len(result.stderr) <= FAST.output_bytes
    assert set(result.stdout) == {"x"} and len(result.stdout) == FAST.output_bytes
    assert grown_mib < 64
    _assert_contained(result, marker)


def test_writes_outside_the_working_directory_do_not_land(iso):
    marker = _marker()
    name = f"slm-sandbox-escape-{uuid.uuid4().hex}"
    targets = []
    if "private-tmp" in iso:  # without a mount namespace world-writable dirs stay writable (documented)
        targets += [Path("/tmp") / name, Path("/var/tmp") / name, Path("/dev/shm") / name]
    if "setuid nobody" in iso or "readonly-root" in iso:
        targets += [REPO / name, REPO / "src" / name]
    if not targets:
        pytest.skip(f"this machine allows no write protection beyond the caller's uid: {iso}")
    body = f"""
        landed = 0
        with open("inside.txt", "w") as handle:
            handle.write("ok")
        print("inside", open("inside.txt").read(), os.getcwd(), flush=True)
        for target in {[str(t) for t in targets]!r}:
            try:
                with open(target, "w") as handle:
                    handle.write("escaped")
                landed += 1
            except OSError as exc:
                print("refused", target, type(exc).__name__)
        raise SystemExit(0 if landed == {len(targets)} else 1)
    """
    try:
        result = run_python(_marked(body, marker), FAST)
        assert result.stdout.startswith("inside ok "), result
        workdir = result.stdout.split()[2]
        assert not os.path.exists(workdir), "working directory not deleted"
        for target in targets:
            assert not target.exists(), f"{target} written from the sandbox: {result}"
        _assert_contained(result, marker)
    finally:
        for target in targets:
            if target.exists():
                target.unlink()


def test_network_is_blocked_or_reported():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.3)
    port = server.getsockname()[1]
    marker = _marker()
    body = f"""
        import socket
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"leak")
            print("connected")
        except OSError as exc:
            print("blocked", type(exc).__name__)
            raise SystemExit(1)
    """
    try:
        result = run_python(_marked(body, marker), FAST)
        try:
            conn, _ = server.accept()
            conn.close()
            connected = True
        except socket.timeout:
            connected = False
    finally:
        server.close()
    if result.network_isolated:
        assert "netns" in result.isolation
        assert not connected and result.stdout.startswith("blocked"), result
        _assert_contained(result, marker)
    else:
        assert "netns" not in result.isolation and connected


def test_parent_environment_secrets_are_invisible(monkeypatch, iso):
    secret = "s3cr3t-" + uuid.uuid4().hex
    monkeypatch.setenv("SLM_SANDBOX_SECRET", secret)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    marker = _marker()
    body = f"""
        print(dict(os.environ))
        found = any("SECRET" in key for key in os.environ)
        for pid in {{"self", "1", str(os.getppid()), "{os.getpid()}"}} | set(os.listdir("/proc")):
            try:
                with open(f"/proc/{{pid}}/environ", "rb") as handle:
                    data = handle.read()
                print(pid, data)
                found = found or b"SECRET" in data
            except OSError:
                pass
        raise SystemExit(0 if found else 1)
    """
    result = run_python(_marked(body, marker), FAST)
    environment = result.stdout.splitlines()[0]
    assert secret not in environment and "SLM_SANDBOX_SECRET" not in environment
    if "setuid nobody" in iso or "private-proc" in iso:  # else a same-uid program may read /proc/PID/environ
        assert secret not in result.stdout and secret not in result.stderr
        assert "SLM_SANDBOX_SECRET" not in result.stdout
    _assert_contained(result, marker)


def test_program_cannot_kill_its_parent_or_the_test(iso):
    if "pidns" not in iso and "setuid nobody" not in iso:
        pytest.skip("same uid and no pid namespace: the program could kill the test runner (documented)")
    bystander = subprocess.Popen(["sleep", "30"])
    marker = _marker()
    everyone = "pidns" in iso and (os.geteuid() != 0 or "setuid nobody" in iso)
    body = f"""
        import signal
        hits = 0
        attempts = [(os.kill, os.getppid()), (os.kill, {os.getpid()}), (os.killpg, {os.getpgid(0)}),
                    (os.kill, {bystander.pid}), (os.kill, 1)]
        if {everyone!r}:
            attempts.append((os.kill, -1))
        attempts.append((os.killpg, os.getpgid(0)))  # last: within the sandbox this may hit itself
        for fn, target in attempts:
            try:
                fn(target, signal.SIGKILL)
                hits += 1
                print("signalled", fn.__name__, target, flush=True)
            except OSError as exc:
                print("refused", fn.__name__, target, type(exc).__name__, flush=True)
        raise SystemExit(0 if hits == len(attempts) else 1)
    """
    try:
        result = run_python(_marked(body, marker), FAST)
        assert bystander.poll() is None, "a process outside the sandbox was killed"
        _assert_contained(result, marker)
    finally:
        bystander.kill()
        bystander.wait()


def test_file_size_and_open_file_limits():
    limits = SandboxLimits(wall_seconds=3.0, file_size_bytes=1 << 20, open_files=32)
    big = run_python("open('big', 'wb').write(b'x' * (4 << 20))", limits)
    assert big.status in ("error", "killed") and "File too large" in big.stderr, big
    many = run_python("handles = [open('f%d' % i, 'w') for i in range(100)]", limits)
    assert many.status == "error" and "Too many open files" in many.stderr, many


def test_killing_the_caller_takes_the_sandbox_down(tmp_path):
    marker = _marker()
    program = _marked("import time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\ntime.sleep(60)\n", marker)
    caller = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("sbx", {str(SANDBOX_FILE)!r})
sbx = importlib.util.module_from_spec(spec)
sys.modules["sbx"] = sbx
spec.loader.exec_module(sbx)
sbx.run_python({program!r}, sbx.SandboxLimits(wall_seconds=60, cpu_seconds=60))
"""
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # a killed caller cannot delete its working directory
    helper = subprocess.Popen([sys.executable, "-I", "-S", "-c", caller], cwd="/", env=env)
    try:
        # the caller's own command line carries the marker too: caller + program + its child
        assert _wait_for(lambda: len(_survivors(marker)) >= 3, 10), "sandboxed program never started"
    finally:
        helper.kill()
        helper.wait()
    assert _wait_for(lambda: not _survivors(marker), 5), "sandbox outlived its caller"
    shutil.rmtree(tmp_path, ignore_errors=True)


def _wait_for(condition, seconds: float) -> bool:
    """Poll `condition` every 20 ms for up to `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# ----------------------------------------------------------------------------- truthful isolation


def test_isolation_available_is_a_dict_of_bools():
    found = isolation_available()
    assert isinstance(found, dict) and found["rlimits"] is True
    assert all(isinstance(value, bool) for value in found.values())
    assert {"netns", "pidns", "mountns", "userns", "setuid"} <= set(found)
    assert isolation_available() is found  # probed once


def test_isolation_tags_are_truthful(iso):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    probe = f"""
        import json, os, socket
        facts = {{"uid": os.getuid(), "pid": os.getpid(), "tmp": sorted(os.listdir("/tmp"))}}
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=1).close()
            facts["net"] = "connected"
        except OSError as exc:
            facts["net"] = type(exc).__name__
        try:
            os.kill({os.getpid()}, 0)
            facts["test_pid"] = "signalable"
        except OSError as exc:
            facts["test_pid"] = type(exc).__name__
        try:
            open("/etc/slm-sandbox-probe", "w")
            facts["etc"] = "writable"
        except OSError as exc:
            facts["etc"] = type(exc).__name__
        print(json.dumps(facts))
    """
    try:
        result = run_python(textwrap.dedent(probe), FAST)
    finally:
        server.close()
    assert result.passed, result
    assert result.isolation == iso
    facts = json.loads(result.stdout)
    assert result.network_isolated == ("netns" in iso)
    if "netns" in iso:
        assert facts["net"] != "connected"
    if "pidns" in iso:
        assert facts["test_pid"] == "ProcessLookupError" and facts["pid"] < 100
    if "setuid nobody" in iso:
        assert facts["uid"] == 65534 and facts["test_pid"] != "signalable"
    if "private-tmp" in iso:
        assert all(name.startswith("slm-sandbox-") for name in facts["tmp"])
    if "readonly-root" in iso or "setuid nobody" in iso:
        assert facts["etc"] != "writable"
    assert not os.path.exists("/etc/slm-sandbox-probe")
    if os.geteuid() == 0:
        assert ("setuid nobody" in iso) != ("running-as-root" in iso)


def test_without_namespaces_the_result_says_so_and_cleanup_still_holds(recwarn):
    marker = _marker()
    body = """
        import time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(60)
            os._exit(0)
        time.sleep(60)
    """
    result = sandbox._run(_marked(body, marker), FAST, "", namespaces=False)
    assert result.status == "timeout" and result.network_isolated is False
    assert not {"netns", "pidns", "mountns"} & set(result.isolation)
    assert "subreaper" in result.isolation
    assert _survivors(marker) == []


def _nobody_python() -> str | None:
    """A Python 3.10+ that uid 65534 can run (to exercise the unprivileged path), if any."""
    for candidate in (sys.executable, os.path.realpath(sys.executable), "/usr/bin/python3", "/usr/local/bin/python3"):
        if not os.path.exists(candidate):
            continue
        check = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", candidate, "-I", "-S", "-c",
                 "import os, subprocess, sys; assert sys.version_info >= (3, 10); "
                 "subprocess.run([os.path.realpath(sys.executable), '-I', '-S', '-c', ''], check=True)"]
        if subprocess.run(check, capture_output=True, cwd="/", check=False).returncode == 0:
            return candidate
    return None


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_unprivileged_caller_degrades_cleanly():
    python = _nobody_python()
    if python is None:
        pytest.skip("no interpreter that uid 65534 can run")
    marker = _marker()
    hostile = _marked("import time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\ntime.sleep(60)\n", marker)
    script = f"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("sbx", {str(SANDBOX_FILE)!r})
sbx = importlib.util.module_from_spec(spec)
sys.modules["sbx"] = sbx
spec.loader.exec_module(sbx)
limits = sbx.SandboxLimits(wall_seconds=2.0, cpu_seconds=2.0, memory_bytes=512 << 20, processes=64)
out = {{"available": sbx.isolation_available()}}
for name, namespaces in (("ns", True), ("plain", False)):
    ok = sbx._run("import os; print(os.getuid())", limits, "", namespaces)
    bad = sbx._run({hostile!r}, limits, "", namespaces)
    out[name] = [ok.status, ok.stdout, list(ok.isolation), ok.network_isolated, bad.status]
print(json.dumps(out))
"""
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-I", "-S",
                           "-c", script], capture_output=True, text=True, cwd="/", timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    for name in ("ns", "plain"):
        status, stdout, isolation, network_isolated, hostile_status = out[name]
        assert status == "ok" and stdout == "65534\n", out
        assert "setuid nobody" not in isolation and "running-as-root" not in isolation
        assert network_isolated == ("netns" in isolation)
        assert hostile_status == "timeout"
    assert not {"netns", "pidns", "userns"} & set(out["plain"][2])
    assert ("userns" in out["ns"][2]) == out["available"]["userns"]
    assert _survivors(marker) == []
