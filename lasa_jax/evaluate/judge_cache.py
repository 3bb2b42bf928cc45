"""The judge verdict cache: `CachedJudge` wraps a judge with an append-only JSONL file of verdicts keyed by
`pair_key`, so re-running an evaluation only judges new responses."""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

from lasa_jax.evaluate.verdicts import Judge, Verdict, check_pairs
from lasa_jax.infra import storage


def pair_key(prompt: str, response: str, language: str | None = None) -> str:
    """sha256 hex of the (prompt, response) pair (and the language, when given), serialised as a JSON list."""
    items = [prompt, response] if language is None else [prompt, response, language]
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8")).hexdigest()


class CachedJudge:
    """Wraps a judge with a JSONL cache of verdicts keyed by (pair_key(prompt, response), judge.name); for a judge
    with `uses_language` the pair's language is part of the key (and is passed on to the judge).

    Only uncached pairs (deduplicated) reach the wrapped judge, in batches of `batch_size`; each batch's verdicts
    are appended to the file in one write followed by fsync, so an interrupted run keeps every finished batch.
    A truncated last line (crash mid-write) is ignored on load and cut off before the next append; any other
    malformed line raises ValueError naming the file and line. Entries of other judges in the same file are kept,
    also when several CachedJudge objects of one process append to it in turn; several processes must not append
    to one file at the same time (the truncation repair would cut another writer's unfinished line): in a
    multi-process run only process 0 passes `write=True`; the others read the file and keep new verdicts in memory.
    `hits` / `misses` count pairs served from the cache / sent to the judge since construction.
    """

    def __init__(self, judge: Judge, cache_path: str | os.PathLike, batch_size: int = 64, write: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.inner = judge
        self.name = judge.name
        self.task = judge.task
        self.uses_language = bool(getattr(judge, "uses_language", False))
        self.cache_path = os.fspath(cache_path)
        self.batch_size = batch_size
        self.write = write
        self.hits = 0
        self.misses = 0
        self._verdicts: dict[tuple[str, str], Verdict] = {}
        self._load()

    def _load(self) -> None:
        """Read the verdicts on the complete lines of the cache file (a truncated last line is ignored)."""
        if not storage.exists(self.cache_path):
            return
        with storage.open_file(self.cache_path, "rb") as f:
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]
        for line_number, line in enumerate(complete.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                verdict = Verdict(entry["label"], entry.get("raw"), tuple(entry.get("categories", ())))
                self._verdicts[(entry["key"], entry["judge"])] = verdict
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{self.cache_path}:{line_number}: malformed judge-cache line ({e})") from e

    def _append(self, entries: list[dict]) -> None:
        if not self.write:
            return
        payload = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries).encode("utf-8")
        if storage.is_url(self.cache_path):
            return storage.append_after_complete_lines(self.cache_path, payload)
        os.makedirs(os.path.dirname(os.path.abspath(self.cache_path)), exist_ok=True)
        with open(self.cache_path, "a+b") as f:
            _drop_unterminated_tail(f)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())

    def judge(self, prompts: Sequence[str], responses: Sequence[str],
              languages: Sequence[str] | None = None) -> list[Verdict]:
        check_pairs(prompts, responses, languages)
        if not self.uses_language:
            languages = None
        keys = [pair_key(p, r, languages[i] if languages is not None else None)
                for i, (p, r) in enumerate(zip(prompts, responses))]
        first_index = {}
        for i, key in enumerate(keys):
            if (key, self.name) not in self._verdicts:
                first_index.setdefault(key, i)
        todo = list(first_index.values())
        self.misses += len(todo)
        self.hits += len(keys) - len(todo)
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start:start + self.batch_size]
            batch_languages = None if languages is None else [languages[i] for i in batch]
            if languages is None:
                verdicts = self.inner.judge([prompts[i] for i in batch], [responses[i] for i in batch])
            else:
                verdicts = self.inner.judge([prompts[i] for i in batch], [responses[i] for i in batch],
                                            languages=batch_languages)
            if len(verdicts) != len(batch):
                raise ValueError(f"{self.name}: judge returned {len(verdicts)} verdicts for {len(batch)} pairs")
            entries = []
            for i, verdict in zip(batch, verdicts):
                self._verdicts[(keys[i], self.name)] = verdict
                entries.append({"key": keys[i], "judge": self.name, "label": verdict.label, "raw": verdict.raw,
                                "categories": list(verdict.categories)})
            self._append(entries)
        return [self._verdicts[(key, self.name)] for key in keys]


def _drop_unterminated_tail(f, chunk: int = 1 << 16) -> None:
    """Truncate a binary file (opened for appending and reading) after its last newline, if it does not end with one:
    the tail is a line cut short by an interrupted write."""
    size = f.seek(0, os.SEEK_END)
    end = size
    while end > 0:
        start = max(0, end - chunk)
        f.seek(start)
        newline = f.read(end - start).rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    if end != size:
        f.truncate(end)
