"""The verdict cache (lasa_jax.evaluate.judge_cache): no judge call twice, crash-safe appends, shared files."""
import json

import pytest

from lasa_jax.evaluate.heuristics import RefusalHeuristicJudge
from lasa_jax.evaluate.judge_cache import CachedJudge, _drop_unterminated_tail, pair_key
from lasa_jax.evaluate.judges import LlamaGuard3Judge


def test_cached_judge_avoids_regeneration(tmp_path, guard_tokenizer, canned_generate):
    cache = tmp_path / "cache" / "verdicts.jsonl"
    generate = canned_generate(["unsafe\nS2", "safe"])
    judge = CachedJudge(LlamaGuard3Judge(generate, guard_tokenizer, model_id="guard"), cache)
    prompts, responses = ["q1", "q2", "q1"], ["a1", "a2", "a1"]
    first = judge.judge(prompts, responses)
    assert [v.label for v in first] == ["unsafe", "safe", "unsafe"] and first[0].categories == ("S2",)
    assert len(generate.calls) == 1 and len(generate.calls[0]) == 2  # duplicate pair judged once
    assert judge.judge(prompts, responses) == first and len(generate.calls) == 1
    reloaded = CachedJudge(LlamaGuard3Judge(generate, guard_tokenizer, model_id="guard"), cache)
    assert reloaded.judge(prompts[::-1], responses[::-1]) == first[::-1]
    assert len(generate.calls) == 1 and (reloaded.hits, reloaded.misses) == (3, 0)
    lines = [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines()]
    assert [(e["key"], e["judge"], e["label"]) for e in lines] == [
        (pair_key("q1", "a1"), "llama-guard-3:guard", "unsafe"), (pair_key("q2", "a2"), "llama-guard-3:guard", "safe")]
    # another judge name sharing the file does not reuse these verdicts
    other = canned_generate(["safe"])
    assert CachedJudge(LlamaGuard3Judge(other, guard_tokenizer, model_id="guard-v2"), cache).judge(
        ["q1"], ["a1"])[0].label == "safe"
    assert len(other.calls) == 1


def test_cached_judge_survives_truncated_last_line(tmp_path):
    cache = tmp_path / "verdicts.jsonl"
    judge = CachedJudge(RefusalHeuristicJudge(), cache, batch_size=2)
    judge.judge(["q1", "q2", "q3"], ["I cannot.", "Sure.", "Okay."])
    assert len(cache.read_text(encoding="utf-8").splitlines()) == 3  # two batches appended
    with open(cache, "ab") as f:  # a crash in the middle of the next append
        f.write(b'{"key": "abc", "judge": "refusal-heur')
    resumed = CachedJudge(RefusalHeuristicJudge(), cache)
    assert [v.label for v in resumed.judge(["q1", "q4"], ["I cannot.", "I'm sorry."])] == ["safe", "safe"]
    assert (resumed.hits, resumed.misses) == (1, 1)
    lines = cache.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4 and all(json.loads(line)["judge"] == resumed.name for line in lines)


def test_cached_judge_rejects_corrupt_middle_line(tmp_path):
    cache = tmp_path / "verdicts.jsonl"
    cache.write_text('not json\n{"key": "k", "judge": "j", "label": "safe"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"verdicts\.jsonl:1: malformed"):
        CachedJudge(RefusalHeuristicJudge(), cache)


def test_cached_judges_sharing_a_file_keep_each_others_entries(tmp_path):
    cache = tmp_path / "shared.jsonl"
    safety = CachedJudge(RefusalHeuristicJudge(), cache)
    refusal = CachedJudge(RefusalHeuristicJudge(task="refusal"), cache)  # opened before the other one writes
    safety.judge(["q1", "q2"], ["I cannot.", "Sure."])
    refusal.judge(["q3"], ["I'm sorry."])
    safety.judge(["q4"], ["Okay."])
    with open(cache, "ab") as f:  # an interrupted append by a third writer
        f.write(b'{"key": "cut')
    refusal.judge(["q5"], ["Fine."])
    entries = [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines()]
    assert [(e["judge"] == safety.name, e["label"]) for e in entries] == [
        (True, "safe"), (True, "unsafe"), (False, "refusal"), (True, "unsafe"), (False, "compliance")]
    reloaded = CachedJudge(RefusalHeuristicJudge(), cache)
    assert [v.label for v in reloaded.judge(["q1", "q4"], ["I cannot.", "Okay."])] == ["safe", "unsafe"]
    assert reloaded.misses == 0


@pytest.mark.parametrize("content, kept", [(b"a\nbb\n", b"a\nbb\n"), (b"a\n" + b"x" * 100, b"a\n"),
                                           (b"x" * 50, b""), (b"", b"")])
def test_drop_unterminated_tail_reads_backwards_in_chunks(tmp_path, content, kept):
    path = tmp_path / "log.jsonl"
    path.write_bytes(content)
    with open(path, "a+b") as f:
        _drop_unterminated_tail(f, chunk=7)
    assert path.read_bytes() == kept
