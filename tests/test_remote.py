"""Remote models against real HTTP servers on loopback: a static server with ``Range`` serving the
real fixture models (bytes counted on the server side), and a Hub-shaped server that
huggingface_hub talks to through ``HF_ENDPOINT``. Nothing here reaches a non-loopback host:
``HF_ENDPOINT`` points at loopback (a closed port when a test has no Hub server).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from http_servers import HubServer, StaticServer
from llamasplit.errors import ModelReadError, UsageError
from llamasplit.model.gguf_reader import read_header
from llamasplit.model.header_cache import HeaderCache, HeaderKey
from llamasplit.model.locate import model_source, open_model
from llamasplit.model.profile import read_model
from llamasplit.model.remote import RemoteOptions, Transfer
from synth import write_model

CHUNK = RemoteOptions().chunk_bytes
FAST = RemoteOptions(backoff_s=0.01, timeout_s=10)


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing answers
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    from llamasplit.llamacpp.binaries import ENV_BIN, bin_dir

    monkeypatch.setenv(ENV_BIN, os.environ.get(ENV_BIN) or str(bin_dir()))  # the built llama.cpp stays found
    monkeypatch.setenv("LLAMASPLIT_CACHE", str(tmp_path / "ls-cache"))


def _same_profile(a, b) -> None:
    assert a.tensors == b.tensors
    assert a.hparams == b.hparams
    assert a.metadata == b.metadata
    assert (a.arch, a.name, a.file_type, a.file_bytes) == (b.arch, b.name, b.file_type, b.file_bytes)


@pytest.mark.parametrize("fixture", ["smollm2_path", "gemma3_path"])
def test_url_reads_only_the_header(request, fixture, tmp_path):
    path = request.getfixturevalue(fixture)
    header = read_header(path)
    header_bytes = header.header_bytes
    # what the parser must see: the header less the numeric arrays it steps over (scores, token types)
    from llamasplit.model.gguf_reader import _SCALAR_STRUCTS, ArraySummary

    skipped = sum(v.count * _SCALAR_STRUCTS[v.element_type].size for v in header.metadata.values()
                  if isinstance(v, ArraySummary) and v.element_type in _SCALAR_STRUCTS)
    with StaticServer({"/models/m.gguf": path}) as srv:
        transfer = Transfer()
        remote = open_model(srv.url("/models/m.gguf"), transfer=transfer, cache=HeaderCache(tmp_path / "c"))
        sent = srv.log.body_bytes
        gets = srv.log.gets()
    _same_profile(remote, read_model(path))
    assert remote.path == srv.url("/models/m.gguf") and remote.files == (remote.path,)
    # every GET was a range request answered 206, and together they cover the header and little more
    assert gets and all(rng and status == 206 for _m, _p, rng, status, _b in gets)
    assert header_bytes - skipped <= sent <= 1.2 * header_bytes + CHUNK
    assert transfer.body_bytes == sent
    assert sent < path.stat().st_size / 10


def test_header_cache_reads_nothing_again_until_the_file_changes(smollm2_path, tmp_path):
    cache = HeaderCache(tmp_path / "c")
    with StaticServer({"/m.gguf": smollm2_path}) as srv:
        first = open_model(srv.url("/m.gguf"), cache=cache)
        srv.log.clear()
        again = open_model(srv.url("/m.gguf"), transfer=(t := Transfer()), cache=cache)
        assert [e[0] for e in srv.log.entries] == ["HEAD"] and srv.log.body_bytes == 0
        assert t.cached == [srv.url("/m.gguf")]
        _same_profile(first, again)
        srv.etags["/m.gguf"] = '"changed"'  # a new version of the file
        srv.log.clear()
        open_model(srv.url("/m.gguf"), cache=cache)
        assert srv.log.body_bytes >= read_header(smollm2_path).header_bytes


def test_header_cache_round_trip_and_damage(gemma3_path, tmp_path):
    cache = HeaderCache(tmp_path)
    key = HeaderKey.for_file(gemma3_path)
    header = read_header(gemma3_path)
    assert cache.get(key) is None
    cache.put(key, header)
    got = cache.get(key)
    assert got.metadata == header.metadata and got.tensors == header.tensors and got.header_bytes == header.header_bytes
    assert cache.get(HeaderKey(key.kind, key.location, "other-version")) is None
    (entry,) = tmp_path.glob("*.json")
    entry.write_text("{not json")
    assert cache.get(key) is None
    assert not list(tmp_path.glob(".tmp-*"))  # atomic writes leave no temporary behind


def test_split_model_every_shard_read_remotely(tmp_path):
    a = write_model(tmp_path / "m-00001-of-00002.gguf", split=(0, 2, 3),
                    tensors=[("token_embd.weight", (256, 64)), ("output_norm.weight", (64,))])
    b = write_model(tmp_path / "m-00002-of-00002.gguf", split=(1, 2, 3), tensors=[("blk.0.attn_norm.weight", (64,))])
    with StaticServer({"/s/m-00001-of-00002.gguf": a, "/s/m-00002-of-00002.gguf": b}) as srv:
        remote = open_model(srv.url("/s/m-00002-of-00002.gguf"), cache=HeaderCache(tmp_path / "c"))
        paths = {p for _m, p, *_ in srv.log.gets()}
    _same_profile(remote, read_model(a))
    assert remote.files == (srv.url("/s/m-00001-of-00002.gguf"), srv.url("/s/m-00002-of-00002.gguf"))
    assert paths == {"/s/m-00001-of-00002.gguf", "/s/m-00002-of-00002.gguf"}


def test_redirect_is_followed_and_ranges_go_to_the_target(smollm2_path, tmp_path):
    with StaticServer({"/real/m.gguf": smollm2_path}) as srv:
        srv.redirects["/go/m.gguf"] = srv.url("/real/m.gguf")
        remote = open_model(srv.url("/go/m.gguf"), cache=HeaderCache(tmp_path))
        assert {p for _m, p, *_ in srv.log.gets()} == {"/real/m.gguf"}
    assert remote.path == srv.url("/go/m.gguf")


def test_retries_429_and_503_with_backoff(smollm2_path, tmp_path):
    with StaticServer({"/m.gguf": smollm2_path}) as srv:
        srv.fail_next = [503, 429]
        remote = open_model(srv.url("/m.gguf"), options=FAST, cache=HeaderCache(tmp_path))
        statuses = [e[3] for e in srv.log.entries]
    assert statuses[:3] == [503, 429, 200]  # two refusals, then the HEAD went through
    assert remote.arch == "llama"


def test_server_ignoring_range_is_refused_not_downloaded(gemma3_path, tmp_path):
    with StaticServer({"/m.gguf": gemma3_path}) as srv:
        srv.ignore_range, srv.accept_ranges = True, None  # answers a range request with 200 and the whole file
        with pytest.raises(ModelReadError, match="does not answer range requests"):
            open_model(srv.url("/m.gguf"), cache=HeaderCache(tmp_path))
        for _ in range(200):  # the server notices the closed connection a moment later
            if srv.log.gets():
                break
            time.sleep(0.05)
        (get,) = srv.log.gets()
    assert get[3] == 200 and get[4] < gemma3_path.stat().st_size / 10


def test_server_saying_no_ranges_is_refused_before_any_get(smollm2_path, tmp_path):
    with StaticServer({"/m.gguf": smollm2_path}) as srv:
        srv.ignore_range, srv.accept_ranges = True, "none"
        with pytest.raises(ModelReadError, match="does not answer range requests"):
            open_model(srv.url("/m.gguf"), cache=HeaderCache(tmp_path))
        assert srv.log.gets() == []


def test_not_found_and_no_server_are_one_line(tmp_path):
    with StaticServer({}) as srv:
        with pytest.raises(ModelReadError, match=r"not found \(HTTP 404\)"):
            open_model(srv.url("/nope.gguf"), cache=HeaderCache(tmp_path))
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/m.gguf"
    with pytest.raises(ModelReadError, match="cannot connect"):
        open_model(url, cache=HeaderCache(tmp_path))


def test_not_a_gguf_over_http(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"<html>" + b"x" * 5000)
    with StaticServer({"/j.gguf": junk}) as srv:
        with pytest.raises(ModelReadError, match="not a GGUF file"):
            open_model(srv.url("/j.gguf"), cache=HeaderCache(tmp_path / "c"))


def test_model_source_kinds():
    assert model_source("https://h/x.gguf").kind == "url"
    assert model_source("x.gguf").kind == "file"
    assert model_source(hf="a/b:Q4_K_M").kind == "hf"
    with pytest.raises(UsageError):
        model_source("x.gguf", hf="a/b")
    with pytest.raises(UsageError):
        model_source(hf_file="x.gguf")
    with pytest.raises(UsageError, match="expected <user>/<model>"):
        model_source(hf="just-a-name").hf_ref()


# --- the Hub, through huggingface_hub ---------------------------------------------------------------


@pytest.fixture
def hub(smollm2_path, gemma3_path, monkeypatch):
    with HubServer() as server:
        repo = "org/Mixed-GGUF"
        server.add(repo, "README.md", Path(__file__))
        server.add(repo, "smollm2-135m-Q4_1.gguf", smollm2_path)
        server.add(repo, "Q4_K_M/gemma-3-270m-Q4_K_M.gguf", gemma3_path)
        server.add(repo, "mmproj-gemma-3-270m-f16.gguf", smollm2_path)  # a projector: never a model
        server.add("org/gated-GGUF", "g-Q4_K_M.gguf", smollm2_path)
        server.gated.add(("org/gated-GGUF", "g-Q4_K_M.gguf"))
        server.add("org/gone-GGUF", "x-Q8_0.gguf", smollm2_path)
        server.missing.add(("org/gone-GGUF", "x-Q8_0.gguf"))
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        yield server


def test_hf_tag_picks_the_file_llama_cpp_would(hub, smollm2_path, gemma3_path, tmp_path):
    cache = HeaderCache(tmp_path)
    # no tag: Q4_K_M first (llama.cpp's default), found in a subfolder
    m = open_model(hf="org/Mixed-GGUF", cache=cache)
    assert m.path == f"{hub.endpoint}/org/Mixed-GGUF/resolve/main/Q4_K_M/gemma-3-270m-Q4_K_M.gguf"
    _same_profile(m, read_model(gemma3_path))
    # a tag, case-insensitive; the bytes came from the CDN (redirected), header only
    hub.cdn.log.clear()
    m = open_model(hf="org/Mixed-GGUF:q4_1", cache=cache)
    _same_profile(m, read_model(smollm2_path))
    assert all(status == 206 for *_x, status, _b in hub.cdn.log.gets())
    assert hub.cdn.log.body_bytes <= 1.2 * read_header(smollm2_path).header_bytes + CHUNK
    # --hf-file overrides the tag
    m = open_model(hf="org/Mixed-GGUF:Q4_K_M", hf_file="smollm2-135m-Q4_1.gguf", cache=cache)
    assert m.arch == "llama"
    # the second time: the listing only, no file request at all
    hub.log.clear()
    hub.cdn.log.clear()
    open_model(hf="org/Mixed-GGUF:Q4_1", cache=cache)
    assert [e[1].split("?")[0] for e in hub.log.entries] == ["/api/models/org/Mixed-GGUF/tree/main"]
    assert hub.cdn.log.entries == []


def test_hf_errors_are_one_line(hub, tmp_path):
    cache = HeaderCache(tmp_path)
    with pytest.raises(ModelReadError, match="gated or private"):
        open_model(hf="org/gated-GGUF", cache=cache)
    with pytest.raises(ModelReadError, match=r"not found \(HTTP 404\)"):
        open_model(hf="org/gone-GGUF:Q8_0", cache=cache)
    with pytest.raises(ModelReadError, match="no such repository"):
        open_model(hf="org/absent-GGUF", cache=cache)
    with pytest.raises(ModelReadError, match="no GGUF file matching 'Q2_K'.*smollm2-135m-Q4_1.gguf"):
        open_model(hf="org/Mixed-GGUF:Q2_K", cache=cache)
    with pytest.raises(ModelReadError, match="no file 'nope.gguf'"):
        open_model(hf="org/Mixed-GGUF", hf_file="nope.gguf", cache=cache)


# --- whole processes: the CLI as users run it -------------------------------------------------------


def _cli(args: list[str], env_extra: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update({"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1",
                "LLAMASPLIT_CACHE": str(tmp_path / "ls-cache"), "HF_ENDPOINT": "http://127.0.0.1:9", **env_extra})
    entry = "import sys; from llamasplit.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", entry, *args], capture_output=True, text=True, env=env, timeout=120)


def _without_location(plan: dict) -> dict:
    plan = dict(plan)
    plan["model"] = {k: v for k, v in plan["model"].items() if k != "path"}
    for key in ("command", "llama_env"):
        plan.pop(key)
    return plan


@pytest.mark.parametrize("fixture", ["smollm2_path", "gemma3_path"])
def test_plan_from_url_equals_plan_from_file(request, fixture, tmp_path):
    path = request.getfixturevalue(fixture)
    with StaticServer({"/m/model.gguf": path}) as srv:
        url = srv.url("/m/model.gguf")
        remote = _cli(["plan", url, "--fleet", "3090,3060-12g", "--json"], {}, tmp_path)
        gets_after_first = len(srv.log.gets())
        cached = _cli(["plan", url, "--fleet", "3090,3060-12g", "--json"], {}, tmp_path)
        gets_after_second = len(srv.log.gets())
    local = _cli(["plan", str(path), "--fleet", "3090,3060-12g", "--json"], {}, tmp_path)
    assert remote.returncode == 0, remote.stderr
    r, lo = json.loads(remote.stdout), json.loads(local.stdout)
    assert _without_location(r) == _without_location(lo)
    assert r["model"]["path"] == url and r["command"][1:3] == ["-mu", url]
    assert r["llama_env"]["LLAMA_ARG_MODEL_URL"] == url
    assert "remotely" in remote.stderr and "from the header cache" in cached.stderr
    assert json.loads(cached.stdout) == r
    assert gets_after_first > 0 and gets_after_second == gets_after_first  # the second process sent no GET


def test_cli_errors_are_one_line(tmp_path):
    with StaticServer({}) as srv:
        done = _cli(["inspect", srv.url("/missing.gguf")], {}, tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "not found (HTTP 404)" in done.stderr
    done = _cli(["plan", "-hf", "nouser", "--fleet", "3090"], {}, tmp_path)
    assert done.returncode == 2 and "expected <user>/<model>" in done.stderr


def test_plan_hf_quants_ranks_every_variant(hub, tmp_path):
    done = _cli(["plan", "-hf", "org/Mixed-GGUF", "--quants", "--fleet", "3090", "--json"], {"HF_ENDPOINT": hub.endpoint}, tmp_path)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    rows = out["variants"]
    # both models (not the projector), both fit a 24 GB card; gemma-3 allows the longer context (32k vs 8k)
    assert [v["variant"] for v in rows] == ["Q4_K_M", "Q4_1"]
    assert [v["fits"] for v in rows] == [True, True]
    assert rows[0]["n_ctx"] > rows[1]["n_ctx"]
    assert out["best"] == "Q4_K_M"
    assert out["command"] == f"llamasplit run -hf org/Mixed-GGUF:Q4_K_M -c {rows[0]['n_ctx']}"
    text = _cli(["plan", "-hf", "org/Mixed-GGUF", "--quants", "--fleet", "3090"], {"HF_ENDPOINT": hub.endpoint}, tmp_path)
    assert "fetch and run: llamasplit run -hf org/Mixed-GGUF:Q4_K_M" in text.stdout
    assert "llama-server -hf org/Mixed-GGUF:Q4_K_M -ngl all" in text.stdout


def test_run_hf_downloads_into_the_hf_cache(hub, smollm2_path, tmp_path):
    code = ("import sys; from llamasplit.model.download import local_copy; from llamasplit.model.locate import model_source;"
            "print(local_copy(model_source(hf=sys.argv[1])))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update({"HF_HOME": str(tmp_path / "hf-home"), "HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_TELEMETRY": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1", "LLAMASPLIT_CACHE": str(tmp_path / "ls")})
    done = subprocess.run([sys.executable, "-c", code, "org/Mixed-GGUF:Q4_1"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    local = Path(done.stdout.strip())
    assert local.is_relative_to(tmp_path / "hf-home") and local.name == "smollm2-135m-Q4_1.gguf"
    assert local.stat().st_size == smollm2_path.stat().st_size
    assert local.read_bytes()[:1 << 20] == smollm2_path.read_bytes()[:1 << 20]
    # offline, -hf answers from the HF cache, as llama.cpp does
    offline = _cli(["plan", "-hf", "org/Mixed-GGUF:Q4_1", "--fleet", "3090", "--json"], {"HF_HUB_OFFLINE": "1"}, tmp_path)
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout)["model"]["path"] == str(local)
    # then run plans the downloaded file (dry run: the command with -m and the local path)
    dry = _cli(["run", str(local), "--fleet", "3090", "--dry-run"], {"HF_ENDPOINT": hub.endpoint}, tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert f"-m {local}" in dry.stdout


def test_token_goes_to_the_hub_only(hub, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "hf_loopback_test_token")
    open_model(hf="org/Mixed-GGUF:Q4_1", cache=HeaderCache(tmp_path))
    assert hub.log.authorization and set(hub.log.authorization) == {"Bearer hf_loopback_test_token"}
    assert hub.cdn.log.entries and set(hub.cdn.log.authorization) == {None}  # the CDN never sees it
    with StaticServer({"/m.gguf": Path(hub.repos["org/Mixed-GGUF"]["smollm2-135m-Q4_1.gguf"])}) as srv:
        open_model(srv.url("/m.gguf"), cache=HeaderCache(tmp_path / "2"))
        assert set(srv.log.authorization) == {None}  # nor does any other server


def test_python_api_plans_urls_and_hub_models(hub, smollm2_path, tmp_path):
    import llamasplit

    with StaticServer({"/m.gguf": smollm2_path}) as srv:
        remote = llamasplit.plan(srv.url("/m.gguf"), "3090", ctx=4096).to_dict()
    local = llamasplit.plan(smollm2_path, "3090", ctx=4096).to_dict()
    from_hub = llamasplit.plan(hf="org/Mixed-GGUF:Q4_1", devices="3090", ctx=4096).to_dict()
    assert _without_location(remote) == _without_location(local) == _without_location(from_hub)
    assert from_hub["model"]["path"].endswith("/org/Mixed-GGUF/resolve/main/smollm2-135m-Q4_1.gguf")


def test_url_download_resumes_and_is_reused(smollm2_path, tmp_path):
    from llamasplit.model.download import download_url

    with StaticServer({"/d/m.gguf": smollm2_path}) as srv:
        url = srv.url("/d/m.gguf")
        first = download_url(url)
        assert first.read_bytes() == smollm2_path.read_bytes()
        srv.log.clear()
        assert download_url(url) == first and srv.log.gets() == []  # same ETag: reused
        # an interrupted download resumes where it stopped
        first.unlink()
        part = first.with_name(first.name + ".incomplete")
        part.write_bytes(smollm2_path.read_bytes()[: 1 << 20])
        srv.log.clear()
        again = download_url(url)
        (get,) = srv.log.gets()
    assert get[2] == f"bytes={1 << 20}-" and get[4] == smollm2_path.stat().st_size - (1 << 20)
    assert again.read_bytes() == smollm2_path.read_bytes()


def test_inspect_and_recommend_take_remote_models(hub, tmp_path):
    env = {"HF_ENDPOINT": hub.endpoint}
    done = _cli(["inspect", "-hf", "org/Mixed-GGUF:Q4_1", "--json"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["arch"] == "llama"
    done = _cli(["recommend", "-hf", "org/Mixed-GGUF", "--hf-file", "smollm2-135m-Q4_1.gguf", "--fleet", "2x3090", "--json"],
                env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["options"]
    done = _cli(["run", "-hf", "org/Mixed-GGUF:Q4_1", "--fleet", "3090", "--dry-run"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"-mu {hub.endpoint}/org/Mixed-GGUF/resolve/main/smollm2-135m-Q4_1.gguf" in done.stdout


def test_header_larger_than_the_cap_is_refused(gemma3_path, tmp_path):
    small_cap = RemoteOptions(max_header_bytes=2 << 20)  # Gemma-3's header is 6.2 MiB
    with StaticServer({"/m.gguf": gemma3_path}) as srv:
        with pytest.raises(ModelReadError, match="header goes on past 2 MiB"):
            open_model(srv.url("/m.gguf"), options=small_cap, cache=HeaderCache(tmp_path))
        assert srv.log.body_bytes <= 2 << 20


def test_offline_mode_is_one_line(smollm2_path, tmp_path):
    with StaticServer({"/m.gguf": smollm2_path}) as srv:
        done = _cli(["plan", srv.url("/m.gguf"), "--fleet", "3090"], {"HF_HUB_OFFLINE": "1"}, tmp_path)
        assert srv.log.entries == []
    assert done.returncode == 1 and "offline mode (HF_HUB_OFFLINE is set)" in done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    done = _cli(["plan", "-hf", "org/x-GGUF", "--fleet", "3090"], {"HF_HUB_OFFLINE": "1"}, tmp_path)
    assert done.returncode == 1 and "offline mode" in done.stderr, done.stderr


@pytest.mark.llamacpp
def test_run_hf_downloads_then_runs_the_plan(hub, tmp_path):
    """`llamasplit run -hf repo:TAG`: huggingface_hub downloads the file into the HF cache, then
    llama-server runs the plan (over a real RPC worker here) and the allocation matches it."""
    from llamasplit.runner.processes import free_port, start_rpc_worker

    worker = start_rpc_worker(threads=1)
    try:
        done = _cli(["run", "-hf", "org/Mixed-GGUF:Q4_1", "--rpc", worker.endpoint, "-c", "1024",
                     "--port", str(free_port()), "--check", "--", "-t", "1"],
                    {"HF_ENDPOINT": hub.endpoint, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}, tmp_path)
    finally:
        worker.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "downloading org/Mixed-GGUF/smollm2-135m-Q4_1.gguf" in done.stderr
    (local,) = (tmp_path / "hf-home").rglob("smollm2-135m-Q4_1.gguf")
    assert f"-m {local}" in done.stderr or f"-m {local.resolve()}" in done.stderr


TRICKY = ["README.md", "mmproj-model-f16.gguf", "sub/model-Q8_0.gguf", "model-IQ4_XS.gguf", "model-q4_1.gguf",
          "model-Q4_K_M-00002-of-00002.gguf", "model-Q4_K_M-00001-of-00002.gguf", "model.Q8_0.gguf",
          "model-Q5_K_M-imatrix.gguf", "model-Q5_K_M.gguf"]


@pytest.mark.llamacpp
@pytest.mark.parametrize("tag", ["", "Q4_K_M", "q8_0", "Q4_1", "Q5_K_M", "IQ4_XS"])
def test_tag_matching_agrees_with_llama_cpp(tag, tmp_path, llama_bin, monkeypatch):
    """Differential: llama.cpp's own -hf against the same Hub-shaped server; it downloads the files
    it picked (then fails to load them: each is a few bytes), and they must be the ones we pick."""
    from llamasplit.model import hub as H

    with HubServer() as server:
        for name in TRICKY:
            blob = tmp_path / "blobs" / name.replace("/", "_")
            blob.parent.mkdir(exist_ok=True)
            blob.write_bytes(f"not a model: {name}".encode())
            server.add("org/Tricky-GGUF", name, blob)
        spec = "org/Tricky-GGUF" + (f":{tag}" if tag else "")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "LLAMA_", "MODEL_"))}
        env.update({"HF_ENDPOINT": server.endpoint, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "0"})
        subprocess.run([str(llama_bin("llama-completion")), "-hf", spec, "-n", "1", "-p", "x", "-no-cnv"],
                       capture_output=True, text=True, env=env, timeout=120)
        got = sorted(str(p.relative_to(snap)) for snap in (tmp_path / "hub").glob("models--*/snapshots/*")
                     for p in snap.rglob("*.gguf"))
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        ref = H.parse_hf(spec)
        ours = sorted(f.path for f in H.choose(ref, H.list_files(ref)))
    assert got and got == ours, (got, ours)
    assert tag or got == ["model-Q4_K_M-00001-of-00002.gguf", "model-Q4_K_M-00002-of-00002.gguf"]  # no tag: Q4_K_M, both shards


def test_a_server_that_does_not_answer_times_out(smollm2_path, tmp_path):
    with StaticServer({"/m.gguf": smollm2_path}) as srv:
        srv.stall_s = 1.0
        t0 = time.perf_counter()
        with pytest.raises(ModelReadError, match="did not answer in time"):
            open_model(srv.url("/m.gguf"), options=RemoteOptions(timeout_s=0.2, retries=1, backoff_s=0.01),
                       cache=HeaderCache(tmp_path))
        assert time.perf_counter() - t0 < 5
        srv.stall_s = 0.0


def test_split_model_on_the_hub(hub, tmp_path):
    a = write_model(tmp_path / "a.gguf", split=(0, 2, 3), tensors=[("token_embd.weight", (256, 64)), ("output_norm.weight", (64,))])
    b = write_model(tmp_path / "b.gguf", split=(1, 2, 3), tensors=[("blk.0.attn_norm.weight", (64,))])
    hub.add("org/Split-GGUF", "Q8_0/m-Q8_0-00002-of-00002.gguf", b)
    hub.add("org/Split-GGUF", "Q8_0/m-Q8_0-00001-of-00002.gguf", a)
    hub.cdn.log.clear()
    remote = open_model(hf="org/Split-GGUF:Q8_0", cache=HeaderCache(tmp_path / "c"))
    local_a = tmp_path / "m-00001-of-00002.gguf"
    local_a.write_bytes(a.read_bytes())
    (tmp_path / "m-00002-of-00002.gguf").write_bytes(b.read_bytes())
    _same_profile(remote, read_model(local_a))
    assert [f.rsplit("/", 1)[-1] for f in remote.files] == ["m-Q8_0-00001-of-00002.gguf", "m-Q8_0-00002-of-00002.gguf"]
    assert len({p for _m, p, *_ in hub.cdn.log.gets()}) == 2  # both shards' headers, from the CDN


def _outcome(read):
    try:
        h = read()
    except ModelReadError as err:
        return ("error", err.message)
    return ("ok", h.version, h.metadata, h.tensors, h.file_bytes, h.data_offset, h.alignment, h.header_bytes)


@pytest.mark.parametrize("chunk", [1, 61, 4096])
def test_growing_prefix_parses_exactly_like_the_whole_file(chunk):
    """Differential over 80 fuzzed headers (tests/fuzzgguf.py): the parser over a prefix that grows
    by ``chunk`` bytes at a time (or the parser's own hint) gives the same header or the same error as
    over the whole file; the bytes it skips are filled with garbage, so they are never read."""
    import random

    import fuzzgguf as F
    from llamasplit.model.gguf_reader import parse_header

    rng = random.Random(1100 + chunk)
    seeds = F.synthetic_seeds()
    for _ in range(80):
        data = F.case(seeds, rng)
        if len(data) < 24:
            continue
        whole = _outcome(lambda: parse_header(data, "m.gguf", len(data)))
        def grow(end, hint, start, buf=bytearray(data[:chunk])):
            assert start >= 0 and end <= len(data)
            have = len(buf)
            target = min(len(data), max(end, max(have, start) + chunk, hint or 0))
            buf.extend(b"\xff" * max(0, start - have))  # skipped bytes: garbage, so reading them would show
            buf.extend(data[max(have, start):target])
            return buf

        prefix = _outcome(lambda: parse_header(bytearray(data[:chunk]), "m.gguf", len(data), grow=grow))
        assert prefix == whole


def test_stored_login_is_used_for_the_hub(hub, tmp_path):
    home = tmp_path / "hf-home"
    home.mkdir()
    (home / "token").write_text("hf_stored_login_token")  # what `hf auth login` writes
    done = _cli(["inspect", "-hf", "org/Mixed-GGUF:Q4_1", "--json"], {"HF_ENDPOINT": hub.endpoint}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Bearer hf_stored_login_token" in hub.log.authorization
    assert set(hub.cdn.log.authorization) == {None}


def test_forbidden_url_is_one_line(smollm2_path, tmp_path):
    with StaticServer({"/m.gguf": smollm2_path}) as srv:
        srv.fail_next = [403]
        with pytest.raises(ModelReadError, match=r"access denied \(HTTP 403\): the repository is gated or private"):
            open_model(srv.url("/m.gguf"), cache=HeaderCache(tmp_path))
        assert len(srv.log.entries) == 1  # refused at once, not retried


def test_header_cache_keeps_a_bounded_number_of_entries(smollm2_path, tmp_path, monkeypatch):
    from llamasplit.model import header_cache

    monkeypatch.setattr(header_cache, "MAX_ENTRIES", 3)
    cache, header = HeaderCache(tmp_path), read_header(smollm2_path)
    for i in range(5):
        cache.put(HeaderKey("url", f"http://h/{i}.gguf", "v"), header)
    assert len(list(tmp_path.glob("*.json"))) == 3
    assert cache.get(HeaderKey("url", "http://h/4.gguf", "v")) is not None
