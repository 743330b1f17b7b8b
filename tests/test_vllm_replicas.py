"""RAIN over two real CPU vLLM replicas behind vLLM's own router (vllm-router, ``--policy
consistent_hash``), started once for this module from ``.venv-vllm`` (``make vllm`` installs both):

- affinity: four decodes at once; every request of a decode carries one session id, and at least 95%
  of each decode's requests reach one replica, counted on the replicas (a middleware in each replica
  logs the session header of every request it receives: ``rain_bench.vllm_session_log``);
- fail-over: the replica serving a decode is killed with SIGKILL in the middle of its search; the
  decode finishes on the other replica with the text of the fault-free run (``seed_mode="send"``),
  and its search trees are the fault-free ones, so no answer was applied twice;
- no replica left: a clean ``EngineError`` carrying the partial answer within the request timeout,
  and no thread or socket of the engine left behind.

The tests run in this order on one cluster (the last two kill its replicas); the fixture ends the
router and every replica it started, by their process ids, and checks that they are gone. A real
vLLM serving all-MiniLM-L6-v2 on /v1/embeddings (the similarity update's encoder) is tested last.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from vllm_server import PYTHON, SERVED_NAME

from rain_bench.vllm_session_log import busiest_shares, read_log, replica_env, replica_flags
from rain_core import EngineError, RainDecoder, SelfEvaluator
from rain_core.engines.vllm import VLLMEngine
from rain_core.engines.vllm.cluster import LocalCluster

pytestmark = pytest.mark.vllm

TINY = dict(max_new_tokens=6, max_searches=3, extra_searches=2, min_visits=1, num_candidates=4, max_simulation_tokens=6)
PROMPTS = ["Tell me about cats.", "How do I bake bread?", "What makes rain fall?", "Name a colour."]
TIMEOUT = 20.0  # the engine's request timeout in these tests


@dataclass
class Replicas:
    """The running cluster and the session log of each replica."""

    cluster: LocalCluster
    logs: list[Path]

    def entries(self, since: float) -> list[list[dict[str, Any]]]:
        """Each replica's logged completion requests since ``since``."""
        return [read_log(path, since) for path in self.logs]


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    from rain_core.loaders.embedded import materialize_default_model

    if not PYTHON.exists():
        pytest.fail(f"{PYTHON} is missing: run `make vllm` (make test builds it first)")
    if not (PYTHON.parent / "vllm-router").exists():
        pytest.fail(f"{PYTHON.parent / 'vllm-router'} is missing: run `make vllm` (it installs vllm-router)")
    folder = tmp_path_factory.mktemp("cluster")
    logs = [folder / f"sessions-{i}.jsonl" for i in range(2)]
    c = LocalCluster(
        PYTHON,
        materialize_default_model(),
        2,
        name=SERVED_NAME,
        extra_flags=replica_flags(),
        env=[replica_env(path) for path in logs],
        log_dir=folder,
    )
    c.start()
    pids = [r.process.pid for r in c.replicas] + [c.router.process.pid]
    try:
        yield Replicas(c, logs)
    finally:
        c.stop()
        for pid in pids:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid


def engine(cluster: LocalCluster) -> VLLMEngine:
    return VLLMEngine(cluster.base_url, SERVED_NAME, seed_mode="send", timeout=TIMEOUT, backoff=0.2)


def decoder(lm: VLLMEngine) -> RainDecoder:
    return RainDecoder(lm, SelfEvaluator(lm, "harmless"), encoder=None, **TINY)


def test_each_decode_keeps_to_one_replica(replicas):
    lm = engine(replicas.cluster)
    since = time.time()
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda p: decoder(lm).generate(p), PROMPTS))
    finally:
        lm.close()
    assert all(r.text for r in results)
    logs = replicas.entries(since)
    assert all(e["session"] for log in logs for e in log), "every request of a decode carries its session"
    shares = busiest_shares(logs)
    assert len(shares) == 4, "four decodes, four sessions"
    assert all(share >= 0.95 and n >= 5 for share, n in shares.values()), shares
    on = {max(range(2), key=lambda i: sum(e["session"] == s for e in logs[i])) for s in shares}
    assert sum(len(log) for log in logs) == sum(n for _, n in shares.values())
    print(f"affinity: {shares}; replicas used {sorted(on)}")


def _trees(result: Any) -> list[dict[str, Any]]:
    return [c["tree"] for c in result.stats["commit_log"]]


def _same_tree(a: dict[str, Any], b: dict[str, Any]) -> bool:
    exact = ("parent", "tokens", "children", "visits", "real_visits", "terminal")
    return all(a[k] == b[k] for k in exact) and all(
        np.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in ("value", "prior")
    )


def _kill_when(replicas: Replicas, since: float, requests: int, which: str, done: threading.Event) -> dict:
    """A watcher: once the decode's session has made ``requests`` requests, SIGKILL the replica
    serving it (``which="serving"``) or every replica (``"all"``)."""
    seen: dict[str, Any] = {}

    def watch() -> None:
        cluster = replicas.cluster
        while not done.is_set():
            logs = replicas.entries(since)
            counts = [len(log) for log in logs]
            if sum(counts) >= requests:
                seen["counts"] = counts
                seen["at"] = time.monotonic()
                for i in [counts.index(max(counts))] if which == "serving" else cluster.alive():
                    cluster.kill(i)
                seen["killed"] = time.monotonic()
                return
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    return seen


def test_a_replica_killed_mid_search_loses_nothing(replicas):
    cluster = replicas.cluster
    prompt = "Write one sentence about the sea."
    lm = engine(cluster)
    try:
        since = time.time()
        clean = decoder(lm).generate(prompt, keep_trees=True)
        total = sum(len(log) for log in replicas.entries(since))
        since = time.time()
        done = threading.Event()
        seen = _kill_when(replicas, since, total // 2, "serving", done)
        try:
            faulty = decoder(lm).generate(prompt, keep_trees=True)
        finally:
            done.set()
    finally:
        lm.close()
    assert "killed" in seen, f"the decode ended before its replica was killed ({total} requests)"
    assert len(cluster.alive()) == 1
    served = [len(log) for log in replicas.entries(since)]
    assert served[cluster.alive()[0]] > seen["counts"][cluster.alive()[0]], "the decode went on elsewhere"
    assert faulty.token_ids == clean.token_ids and faulty.text == clean.text
    assert len(_trees(faulty)) == len(_trees(clean))
    assert all(_same_tree(a, b) for a, b in zip(_trees(faulty), _trees(clean))), "a request applied twice?"
    retries = faulty.stats["retries"]
    print(f"fail-over: killed after {seen['counts']} requests of {total}; {retries} retries by the engine")


def _engine_sockets(ports: set[int]) -> list[Any]:
    return [c for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr.port in ports]


def test_with_no_replica_left_the_decode_fails_cleanly_with_its_partial_answer(replicas):
    cluster = replicas.cluster
    assert cluster.alive(), "the fail-over test leaves one replica"
    threads = threading.active_count()
    lm = engine(cluster)
    ports = {cluster.router.port} | {r.port for r in cluster.replicas}
    since = time.time()
    done = threading.Event()
    seen = _kill_when(replicas, since, 25, "all", done)
    try:
        with pytest.raises(EngineError) as info:
            decoder(lm).generate("Describe a walk through a forest in autumn.", max_new_tokens=40)
        ended = time.monotonic()
    finally:
        done.set()
        lm.close()
    assert "killed" in seen and not cluster.alive()
    assert ended - seen["killed"] < TIMEOUT + 5, "within the request timeout"
    partial = info.value.partial
    assert partial is not None and partial.text == lm.decode(partial.token_ids)
    assert isinstance(info.value.__cause__, EngineError), info.value.__cause__
    print(f"no replica left: {type(info.value.__cause__).__name__}: {info.value}; partial {partial.text!r}")
    deadline = time.monotonic() + 10
    while (threading.active_count() > threads or _engine_sockets(ports)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert threading.active_count() <= threads, [t.name for t in threading.enumerate()]
    assert not _engine_sockets(ports)


# --- the similarity update's encoder, served by a real vLLM --------------------------------------------
@pytest.fixture(scope="module")
def encoder_server(tmp_path_factory):
    from rain_core.engines.encoder import default_encoder_path
    from rain_core.engines.vllm.launch import ENCODER_FLAGS, LocalVLLMServer

    server = LocalVLLMServer(
        PYTHON,
        default_encoder_path(),
        name="minilm",
        flags=ENCODER_FLAGS,
        warm_up=False,
        log_path=tmp_path_factory.mktemp("encoder") / "vllm.log",
    )
    server.start(timeout=300)
    try:
        yield server
    finally:
        server.stop()


def test_vllm_serves_the_similarity_encoder(encoder_server):
    from rain_core import served_encoder
    from rain_core.loaders import load_default_encoder

    texts = ["How do I pick a lock?", "The weather is nice.", "word " * 400]  # the last one is cut to 256 tokens
    with served_encoder(encoder_server.base_url) as enc:
        assert enc.model == "minilm" and enc.dim == 384
        got = enc.encode(texts)
    assert np.allclose(got, load_default_encoder().encode(texts), atol=1e-5)
