"""Teacher synthesis against a local chat-completions server with failures, slowness and a kill."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from _data_helpers import make_raw_rows, write_raw_dir
from reasonrank_jax.data import synth

SECRET = "sk-test-do-not-print-0123456789"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Teacher:
    """A chat-completions server. Per query: scripted failures first, then a well-formed answer
    that ranks the passages in reverse and marks passage [1] relevant."""

    def __init__(self, failures=(), delay=0.0, slow_first=0.0):
        self.failures, self.delay, self.slow_first = list(failures), delay, slow_first
        self.requests, self.attempts, self.lock = 0, {}, threading.Lock()
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.path == "/v1/chat/completions"
                assert self.headers.get("Authorization") == f"Bearer {SECRET}"
                user = body["messages"][-1]["content"]
                query = re.search(r"Search Query: (.*?)\.\n", user).group(1)
                num = int(re.search(r"provide you with (\d+) passages", user).group(1))
                with teacher.lock:
                    teacher.requests += 1
                    attempt = teacher.attempts[query] = teacher.attempts.get(query, 0) + 1
                if attempt == 1 and teacher.slow_first:
                    time.sleep(teacher.slow_first)  # longer than the client's timeout
                if attempt <= len(teacher.failures):
                    code = teacher.failures[attempt - 1]
                    self.send_response(code)
                    if code == 429:
                        self.send_header("Retry-After", "0")
                    self.end_headers()
                    return
                time.sleep(teacher.delay)
                ranking = " > ".join(f"[{i}]" for i in range(num, 0, -1))
                content = f"<answer>{ranking}</answer>\n<relevant>[1]</relevant>"
                message = {"role": "assistant", "content": content}
                if hash(query) % 2:
                    message["reasoning_content"] = f"thinking about {query}"
                else:
                    message["content"] = f"<think>thinking about {query}</think>" + content
                data = json.dumps({"choices": [{"index": 0, "message": message}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _jobs(rows, raw):
    return list(synth.jobs_from_raw(os.path.join(raw, "training_data_all.jsonl"), raw))


def _check_rows(out_path, rows):
    written = [json.loads(line) for line in open(out_path)]
    keys = [(r["dataset"], r["qid"]) for r in written]
    assert len(keys) == len(set(keys)), "duplicated rows"
    assert set(keys) == {(r["dataset"], r["qid"]) for r in rows}, "lost rows"
    source = {(r["dataset"], r["qid"]): r for r in rows}
    for w in written:
        s = source[(w["dataset"], w["qid"])]
        assert w["initial_list"] == s["initial_list"]
        assert w["final_list"] == s["initial_list"][::-1] and w["relevant_docids"] == s["initial_list"][:1]
        assert w["reasoning"].startswith("thinking about ")


def test_parse_teacher_reply():
    msg = {"content": "<think> why </think>\n<answer>[2] > [2] > [3]</answer><relevant>[3]</relevant>"}
    assert synth.parse_teacher_reply(msg, 3) == ("why", [2, 3, 1], [3])
    msg = {"reasoning_content": "r", "content": "<answer>[1]</answer><relevant></relevant>"}
    assert synth.parse_teacher_reply(msg, 2) == ("r", [1, 2], [])
    for bad in ({"reasoning_content": "r", "content": "[1] > [2]"},
                {"reasoning_content": "r", "content": "<answer>[0] > [1]</answer><relevant></relevant>"},
                {"reasoning_content": "r", "content": "<answer>[3]</answer><relevant></relevant>"},
                {"content": "<answer>[1]</answer><relevant></relevant>"}):
        with pytest.raises(synth.BadAnswer):
            synth.parse_teacher_reply(bad, 2)


def test_synthesize_retries_500_429_and_timeouts(tmp_path, qwen2_tokenizer_dir):
    from reasonrank_jax.text import load_tokenizer

    rows = [dict(r, relevant_docids=[], final_list=[]) for r in make_raw_rows(12, seed=4)]
    raw = write_raw_dir(str(tmp_path / "raw"), rows, bad_lines=False)
    teacher = Teacher(failures=(500, 429, 503), slow_first=0.6)
    try:
        client = synth.ChatClient(teacher.url, "teacher", SECRET, timeout=0.3, max_retries=5, backoff=0.01)
        assert SECRET not in repr(client)
        out = str(tmp_path / "rows.jsonl")
        stats = synth.synthesize(_jobs(rows, raw), client, load_tokenizer(qwen2_tokenizer_dir), out,
                                 concurrency=4, progress=False)
        assert stats.written == 12 and not stats.failed
        # per query: slow first answer (timed out, then 500), 429, 503, success -> 4 requests each
        assert teacher.requests == 12 * 4 and client.retries == 12 * 3
        _check_rows(out, rows)
        again = synth.synthesize(_jobs(rows, raw), client, load_tokenizer(qwen2_tokenizer_dir), out,
                                 progress=False)
        assert again.written == 0 and again.skipped_done == 12 and teacher.requests == 48
    finally:
        teacher.close()


def test_gives_up_and_reports_after_max_retries(tmp_path, qwen2_tokenizer_dir):
    from reasonrank_jax.text import load_tokenizer

    rows = make_raw_rows(2, seed=5)
    raw = write_raw_dir(str(tmp_path / "raw"), rows, bad_lines=False)
    teacher = Teacher(failures=(500,) * 10)
    try:
        client = synth.ChatClient(teacher.url, "teacher", SECRET, max_retries=2, backoff=0.001)
        out = str(tmp_path / "rows.jsonl")
        stats = synth.synthesize(_jobs(rows, raw), client, load_tokenizer(qwen2_tokenizer_dir), out, progress=False)
        assert stats.written == 0 and len(stats.failed) == 2 and teacher.requests == 2 * 3
        assert open(out).read() == ""
    finally:
        teacher.close()


def test_torn_last_line_is_dropped_on_restart(tmp_path):
    out = tmp_path / "rows.jsonl"
    out.write_text('{"dataset": "a", "qid": "1"}\n{"dataset": "a", "qi')
    assert synth.completed_keys(str(out)) == {("a", "1")}
    assert out.read_text() == '{"dataset": "a", "qid": "1"}\n'


def test_killed_synth_process_resumes_without_loss_or_duplicates(tmp_path, qwen2_tokenizer_dir):
    rows = [dict(r, relevant_docids=[], final_list=[]) for r in make_raw_rows(30, seed=6)]
    raw = write_raw_dir(str(tmp_path / "raw"), rows, bad_lines=False)
    out = tmp_path / "rows.jsonl"
    teacher = Teacher(failures=(500,), delay=0.15)
    cmd = [sys.executable, "-m", "reasonrank_jax", "data", "synth", "--endpoint", teacher.url,
           "--model", "teacher", "--api-key-env", "TEACHER_KEY", "--tokenizer", qwen2_tokenizer_dir,
           "--out", str(out), "--raw", os.path.join(raw, "training_data_all.jsonl"), "--raw-dir", raw,
           "--concurrency", "3", "--backoff", "0.01"]
    env = dict(os.environ, PYTHONPATH=REPO, TEACHER_KEY=SECRET)
    try:
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 5):
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first_output = first.communicate()[0].decode()
        done_before = out.read_text().count("\n")
        assert 5 <= done_before < 30, "the kill should land midway"
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr
        assert f"({done_before} already there)" in second.stdout
        assert SECRET not in first_output + second.stdout + second.stderr
        _check_rows(out, rows)
        # requests: at most 2 per query answered (500 then success) plus those cut off by the kill
        assert teacher.requests <= 2 * 30 + 3 * 2
    finally:
        teacher.close()
