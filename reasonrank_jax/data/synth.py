"""Teacher synthesis: ask a reasoning model behind an OpenAI-compatible chat-completions endpoint
for reasoning, a ranking and the relevant passages of each candidate list; write raw rows.

Teacher prompt. The messages are the inference prompt of mode ``rank_GPT_reasoning`` (SPEC 1:
the RankLLM system prompt, the numbered passages, the ranking instruction), so the teacher sees
exactly what the student will see, with one paragraph appended to the user message:

    After the ranking, also list the identifiers of the passages that are relevant to the search
    query, i.e. that contain information which helps answer it, in descending order of relevance.
    Reply in exactly this form:
    <answer>[2] > [1] > [3]</answer>
    <relevant>[2] > [1]</relevant>
    Write <relevant></relevant> if no passage is relevant.

The reasoning is read from the reply's ``reasoning_content`` (DeepSeek-R1 API, vLLM/SGLang reasoning
parsers) or else from ``<think>...</think>`` in its content. The ranking's ids are parsed like the
inference parser (non-digits to spaces, duplicates dropped, missing ids appended in window order);
an id outside 1..n or a reply without ``<answer>`` counts as a bad answer and is asked again.

Robustness: every finished row is appended to the output file as one line and flushed (a crash
loses nothing already answered); a restart skips the (dataset, qid) keys already in the file and
drops a torn last line. An existing output file with any other complete line is not this log and
is refused, untouched. HTTP 429/5xx, timeouts and connection errors are retried with exponential
backoff (honouring a numeric Retry-After); requests run on a bounded thread pool. The API key comes
from an environment variable and is never printed or logged.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Iterable, Iterator

from reasonrank_jax.errors import InputError
from reasonrank_jax.inputs import iter_records, read_corpus, read_jsonl_log, read_queries, truncate_torn_tail

TEACHER_INSTRUCTION = (
    "\nAfter the ranking, also list the identifiers of the passages that are relevant to the search "
    "query, i.e. that contain information which helps answer it, in descending order of relevance. "
    "Reply in exactly this form:\n<answer>[2] > [1] > [3]</answer>\n<relevant>[2] > [1]</relevant>\n"
    "Write <relevant></relevant> if no passage is relevant.")
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
LOG_KEYS = ("dataset", "qid")  # what every line of an output file that a restart resumes from must have


@dataclasses.dataclass
class Job:
    """One candidate list to label: passages are dicts with docid and text (and title)."""

    dataset: str
    qid: str
    query: str
    passages: list[dict]

    @property
    def key(self) -> tuple[str, str]:
        return self.dataset, self.qid


class BadAnswer(ValueError):
    """The teacher answered, but not in the requested form."""


class FatalHTTPError(RuntimeError):
    """An HTTP error that retrying cannot fix (bad request, authentication, unknown model)."""


def teacher_messages(tokenizer, job: Job, max_passage_length: int = 512) -> list[dict]:
    from reasonrank_jax.text import build_messages

    messages = [dict(m) for m in build_messages(tokenizer, job.query, job.passages, mode="rank_GPT_reasoning",
                                                 max_passage_length=max_passage_length)]
    messages[-1]["content"] += TEACHER_INSTRUCTION
    return messages


def _ids(text: str, num: int) -> list[int]:
    """1-based ids in order, duplicates dropped; any id outside 1..num is a bad answer."""
    out: list[int] = []
    for token in re.sub(r"\D", " ", text).split():
        n = int(token)
        if not 1 <= n <= num:
            raise BadAnswer(f"id [{n}] outside 1..{num}")
        if n not in out:
            out.append(n)
    return out


def parse_teacher_reply(message: dict, num: int) -> tuple[str, list[int], list[int]]:
    """(reasoning, ranking 1-based complete, relevant 1-based) from a chat-completions message."""
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
    think = re.search(r"<think>(.*?)</think>", content, re.DOTALL)
    if not reasoning and think:
        reasoning = think.group(1)
    answer_text = content[think.end():] if think else content
    answer = re.search(r"<answer>(.*?)</answer>", answer_text, re.DOTALL)
    if answer is None:
        raise BadAnswer("no <answer>...</answer> in the reply")
    ranking = _ids(answer.group(1), num)
    if not ranking:
        raise BadAnswer("empty ranking")
    ranking += [i for i in range(1, num + 1) if i not in ranking]
    relevant = re.search(r"<relevant>(.*?)</relevant>", answer_text, re.DOTALL)
    if relevant is None:
        raise BadAnswer("no <relevant>...</relevant> in the reply")
    if not reasoning.strip():
        raise BadAnswer("no reasoning (neither reasoning_content nor <think>)")
    return reasoning.strip(), ranking, _ids(relevant.group(1), num)


def raw_row(job: Job, reasoning: str, ranking: list[int], relevant: list[int]) -> dict:
    initial = [p["docid"] for p in job.passages]
    return {"dataset": job.dataset, "qid": job.qid, "initial_list": initial,
            "final_list": [initial[i - 1] for i in ranking], "reasoning": reasoning,
            "relevant_docids": [initial[i - 1] for i in relevant]}


class ChatClient:
    """Minimal chat-completions client on urllib with retries and exponential backoff."""

    def __init__(self, endpoint: str, model: str, api_key: str | None, timeout: float = 600.0,
                 max_retries: int = 8, backoff: float = 2.0, max_backoff: float = 120.0,
                 extra_body: dict | None = None):
        endpoint = endpoint.rstrip("/")
        self.url = endpoint if endpoint.endswith("/chat/completions") else endpoint + "/chat/completions"
        self.model, self._api_key, self.timeout = model, api_key, timeout
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.extra_body = dict(extra_body or {})
        self.retries = 0  # total retried requests, for the summary
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never show the key
        return f"ChatClient(url={self.url!r}, model={self.model!r})"

    def _post(self, messages: list[dict]) -> dict:
        body = json.dumps({"model": self.model, "messages": messages, **self.extra_body}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read().decode("utf-8"))

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        delay = min(self.max_backoff, self.backoff * 2 ** attempt) * (0.5 + random.random() / 2)
        if retry_after and retry_after.strip().isdigit():
            delay = max(delay, min(self.max_backoff, float(retry_after)))
        with self._lock:
            self.retries += 1
        time.sleep(delay)

    def complete(self, messages: list[dict]) -> dict:
        """The first choice's message; retries transient failures, raises after max_retries."""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                reply = self._post(messages)
                return reply["choices"][0]["message"]
            except urllib.error.HTTPError as err:
                if err.code not in RETRY_STATUSES:
                    raise FatalHTTPError(f"HTTP {err.code} from {self.url}: {err.reason}") from None
                retry_after, last = err.headers.get("Retry-After"), f"HTTP {err.code}"
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as err:
                last = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
            except (json.JSONDecodeError, KeyError, IndexError, TypeError) as err:
                last = f"malformed response: {type(err).__name__}"
            if attempt < self.max_retries:
                self._sleep(attempt, retry_after)
        raise RuntimeError(f"giving up after {self.max_retries + 1} attempts: {last}")


def completed_keys(out_path: str) -> set[tuple[str, str]]:
    """(dataset, qid) of rows already written; a torn last line (crash mid-write) is cut off.

    An existing file that is not such a log (e.g. a run file given as --out by mistake) is refused
    with an InputError and left untouched.
    """
    rows, good_bytes, torn = read_jsonl_log(out_path, LOG_KEYS)
    if torn:
        truncate_torn_tail(out_path, good_bytes)
    return {(str(row["dataset"]), str(row["qid"])) for row in rows}


@dataclasses.dataclass
class SynthStats:
    written: int = 0
    skipped_done: int = 0
    bad_answers: int = 0
    failed: list[str] = dataclasses.field(default_factory=list)


def synthesize(jobs: Iterable[Job], client: ChatClient, tokenizer, out_path: str, concurrency: int = 8,
               max_answer_attempts: int = 3, max_passage_length: int = 512, progress: bool = True) -> SynthStats:
    """Label every job not already in ``out_path``; rows are appended as they arrive."""
    from tqdm import tqdm

    done = completed_keys(out_path)
    stats, pending, seen = SynthStats(), [], set()
    for job in jobs:
        if job.key in done or job.key in seen:
            stats.skipped_done += job.key in done
            continue
        seen.add(job.key)
        pending.append(job)
    write_lock, count_lock = threading.Lock(), threading.Lock()

    def label(job: Job) -> dict:
        messages = teacher_messages(tokenizer, job, max_passage_length)
        for attempt in range(max_answer_attempts):
            message = client.complete(messages)
            try:
                return raw_row(job, *parse_teacher_reply(message, len(job.passages)))
            except BadAnswer:
                with count_lock:
                    stats.bad_answers += 1
        raise BadAnswer(f"no well-formed answer in {max_answer_attempts} tries")

    with open(out_path, "a", encoding="utf-8") as out, \
            tqdm(total=len(pending), desc="teacher", unit="query", disable=not progress) as bar, \
            concurrent.futures.ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = {pool.submit(label, job): job for job in pending}
        try:
            for future in concurrent.futures.as_completed(futures):
                job = futures[future]
                try:
                    row = future.result()
                except FatalHTTPError:
                    raise
                except (BadAnswer, RuntimeError) as err:
                    stats.failed.append(f"{job.dataset}/{job.qid}: {err}")
                else:
                    with write_lock:
                        out.write(json.dumps(row, ensure_ascii=False) + "\n")
                        out.flush()
                    stats.written += 1
                bar.update(1)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return stats


# ---- where jobs come from ----

def jobs_from_run(run_path: str, corpus_path: str, queries_path: str, dataset: str, top_k: int = 20
                  ) -> Iterator[Job]:
    """Top-k of a TREC run with texts from a corpus and a queries file (any format of reasonrank_jax.inputs)."""
    from reasonrank_jax.data.bright_files import read_run

    run, queries = read_run(run_path, top_k), read_queries(queries_path)
    corpus = read_corpus(corpus_path, {docid for ranked in run.values() for docid, _ in ranked})
    for qid, ranked in run.items():
        if qid not in queries:
            raise InputError(f"query {qid!r} of the run not in the queries file", path=queries_path)
        yield Job(dataset, qid, queries[qid], [{"docid": d, **corpus[d]} for d, _ in ranked])


def jobs_from_raw(raw_path: str, raw_dir: str) -> Iterator[Job]:
    """Rows with dataset, qid, initial_list (labels not needed) and the id_query/ id_doc/ maps."""
    from reasonrank_jax.data.records import RawTexts

    texts = RawTexts(raw_dir)
    for lineno, obj in iter_records(raw_path):
        if not all(k in obj for k in ("dataset", "qid", "initial_list")):
            raise InputError("expected dataset, qid, initial_list", path=raw_path, line=lineno)
        row = {"dataset": str(obj["dataset"]), "qid": str(obj["qid"]),
               "initial_list": [str(d) for d in obj["initial_list"]]}
        yield Job(row["dataset"], row["qid"], texts.query(row, raw_path, lineno),
                  texts.passages(row, raw_path, lineno))
