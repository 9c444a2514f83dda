"""Children's logs: in the cache's logs folder, bounded, removed after a good end, kept after a bad one."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

from llamasplit.runner.logs import LogPump, log_dir
from llamasplit.runner.processes import spawn, spawn_attached


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMASPLIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _temp_logs() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("llamasplit-") and n.endswith(".log")}


def test_logs_live_in_the_cache_and_go_after_a_clean_exit(cache):
    before = _temp_logs()
    p = spawn(_py("print('hello')"))
    assert p.log_path.parent == cache / "logs" == log_dir()
    assert p.proc.wait(timeout=10) == 0
    p.stop()
    assert not p.log_path.exists()
    assert _temp_logs() == before  # nothing in the temp directory any more


def test_a_failed_child_keeps_its_log(cache):
    p = spawn(_py("import sys; print('boom'); sys.exit(3)"))
    assert p.proc.wait(timeout=10) == 3
    p.stop()
    assert p.log_path.read_text() == "boom\n"


def test_a_child_we_stop_loses_its_log_unless_an_error_names_it(cache):
    a = spawn(_py("import time; print('up', flush=True); time.sleep(60)"))
    b = spawn(_py("import time; print('up', flush=True); time.sleep(60)"))
    b.keep_log = True
    for p in (a, b):
        deadline = time.monotonic() + 20
        while p.log_text() != "up\n" and time.monotonic() < deadline:
            time.sleep(0.02)
        p.stop()
    assert not a.log_path.exists()
    assert b.log_path.read_text() == "up\n"


def test_attached_child_logs_its_stderr_only(cache, capfd):
    p = spawn_attached(_py("import sys; print('text'); print('log line', file=sys.stderr); sys.exit(1)"))
    assert p.proc.wait(timeout=10) == 1
    p.stop()
    assert p.log_path.read_text() == "log line\n"
    assert "text" in capfd.readouterr().out


def test_a_chatty_child_s_log_stays_bounded_with_its_head_and_its_latest_lines(cache):
    # 20 MB of numbered lines: the file keeps the first 2 MiB and the newest output, under 8 MiB
    code = "import sys\nfor i in range(1_000_000): sys.stdout.write('line %07d %s\\n' % (i, 'x' * 8))\nsys.exit(1)"
    p = spawn(_py(code))
    assert p.proc.wait(timeout=60) == 1
    p.stop()
    data = p.log_path.read_bytes()
    assert len(data) <= (8 << 20) + 100
    assert data.startswith(b"line 0000000 ") and data.endswith(b"line 0999999 xxxxxxxx\n")
    assert b"[llamasplit: output cut here to keep the log under 8 MiB]" in data
    head = data[: 2 << 20]
    assert head == b"".join(b"line %07d xxxxxxxx\n" % i for i in range(len(head) // 22 + 1))[: 2 << 20]


def test_pump_keeps_everything_under_the_bound(tmp_path):
    r, w = os.pipe()
    pump = LogPump(r, tmp_path / "x.log", max_bytes=1000, head_bytes=100)
    data = b"".join(b"%04d\n" % i for i in range(150))  # 750 bytes
    os.write(w, data)
    os.close(w)
    pump.join()
    assert (tmp_path / "x.log").read_bytes() == data


def test_stop_all_counts_its_own_sigterm_as_a_good_end(cache):
    from llamasplit.runner.processes import stop_all

    ps = [spawn(_py("import time; time.sleep(60)")) for _ in range(2)]
    failed = spawn(_py("import sys; sys.exit(2)"))
    assert failed.proc.wait(timeout=10) == 2
    stop_all([*ps, failed])
    assert [p.log_path.exists() for p in ps] == [False, False]
    assert failed.log_path.exists()
