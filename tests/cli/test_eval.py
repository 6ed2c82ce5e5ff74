"""`rlkv-edge eval`: task accuracy and next-token KL / top-1 agreement against no compression."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from app_fixtures import run_cli, tiny_rlkv


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_rlkv(tmp_path_factory.mktemp("eval") / "tiny-rlkv.gguf").path


def test_extract_and_score() -> None:
    from rlkv_edge.evaluate import Task, is_correct
    from rlkv_edge.scoring import extract_answer

    assert extract_answer("so \\boxed{42}.") == "42"
    assert extract_answer("<think>Answer: 3</think>Work...\nAnswer: 7.") == "7"
    assert extract_answer("<answer> x </answer>") == "x"
    assert is_correct("The answer is 1,000", Task("q", "1000"))
    assert is_correct("Answer: Paris", Task("q", "paris"))
    assert not is_correct("Answer: 5", Task("q", "6"))


def test_eval_tasks_and_text(tiny: Path, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    rows = [
        {"prompt": "the cat sat on the", "answer": "mat"},
        {"question": "1 + 1 =", "answer": 2},
        {"prompt": "a", "answer": "b"},
    ]
    tasks.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    text = tmp_path / "text.txt"
    text.write_text(" ".join(["the cat sat on the mat and the dog is in the mat of a cat"] * 12))
    r = run_cli(
        "eval",
        str(tiny),
        "--tasks",
        str(tasks),
        "--text",
        str(text),
        "-s",
        "0",
        "-s",
        "0.5",
        "-s",
        "1",
        "--max-tokens",
        "6",
        "--ctx",
        "512",
        "-t",
        "2",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    tr = out["tasks"]["results"]
    assert [x["label"] for x in tr] == ["none", "s=0", "s=0.5", "s=1"]
    for x in tr:
        assert x["n"] == 3 and 0.0 <= x["accuracy"] <= 1.0 and 0.0 <= x["cut_off"] <= 1.0
        assert 0 < x["mean_output_tokens"] <= 7  # llama-cpp-python counts the stop token too
    txt = out["text"]["results"]
    assert txt[0]["n_tokens"] > 4 * (4 + 16)  # longer than sinks + window: local heads do evict
    assert txt[0]["mean_kl"] == 0.0 and txt[0]["top1_agreement"] == 1.0
    assert txt[1]["mean_kl"] == 0.0 and txt[1]["top1_agreement"] == 1.0  # s = 0: exactly no compression
    assert txt[3]["mean_kl"] > 0.0  # s = 1: every head local


def test_scored_chunks_are_llama_perplexity_positions() -> None:
    """--chunks cuts the text as llama-perplexity does: n_ctx-token chunks, BOS first in each, the second half
    scored (the last position's next token is outside the chunk, so not scored); -1 takes every chunk."""
    from rlkv_edge.errors import DataError
    from rlkv_edge.evaluate import scored_chunks

    tokens = [1, *range(100, 125)]  # BOS + 25 tokens: 3 whole chunks of 8
    assert scored_chunks(tokens, 8, None, 1) == [(tokens[:8], slice(0, None))]
    windows = scored_chunks(tokens, 8, -1, 1)
    assert [w for w, _ in windows] == [[1, *range(100, 107)], [1, *range(108, 115)], [1, *range(116, 123)]]
    assert all(sc == slice(4, 7) for _, sc in windows)
    assert len(scored_chunks(tokens, 8, 2, 1)) == 2
    with pytest.raises(DataError, match="at least one chunk of --ctx 32"):
        scored_chunks(tokens, 32, 1, 1)


def test_eval_text_chunks(tiny: Path, tmp_path: Path) -> None:
    """`eval --text --chunks 2`: two chunks of --ctx, half of each scored; --chunks without --text, or 0, is refused."""
    text = tmp_path / "text.txt"
    text.write_text(" ".join(["the cat sat on the mat and the dog is in the mat of a cat"] * 40))
    r = run_cli("eval", str(tiny), "--text", str(text), "-s", "1", "--ctx", "128", "--chunks", "2", "-t", "2", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)["text"]
    assert out["scoring"].startswith("llama-perplexity's") and "2 chunks" in out["scoring"]
    assert [x["n_tokens"] for x in out["results"]] == [2 * 63, 2 * 63]
    assert out["results"][1]["mean_kl"] > 0.0
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"prompt": "a", "answer": "b"}\n')
    for args, message in (
        (["--tasks", str(tasks), "--chunks", "2"], "--chunks needs --text"),
        (["--text", str(text), "--chunks", "0"], "--chunks must be positive"),
    ):
        r = run_cli("eval", str(tiny), *args)
        assert r.returncode == 2 and r.stderr.startswith("rlkv-edge: error:") and message in r.stderr, r.stderr


def test_eval_reasoning_gym_table(tiny: Path) -> None:
    pytest.importorskip("reasoning_gym")
    r = run_cli(
        "eval",
        str(tiny),
        "--tasks",
        "reasoning-gym:basic_arithmetic",
        "--limit",
        "2",
        "-n",
        "4",
        "--ctx",
        "512",
        "-t",
        "2",
    )
    assert r.returncode == 0, r.stderr
    assert "| none | 0 |" in r.stdout and "| s=0.5 | 0.5 |" in r.stdout


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json\n", "not valid JSON"),
        ('{"prompt": "x"}\n', "needs a string 'prompt'"),
        ("[1, 2]\n", "must be a JSON object"),
        ("\n", "no tasks"),
    ],
)
def test_malformed_tasks_one_line(tiny: Path, tmp_path: Path, content: str, message: str) -> None:
    tasks = tmp_path / "bad.jsonl"
    tasks.write_text(content)
    r = run_cli("eval", str(tiny), "--tasks", str(tasks))
    assert r.returncode != 0
    assert r.stderr.startswith("rlkv-edge: error:") and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_eval_missing_inputs(tiny: Path, tmp_path: Path) -> None:
    for args in (["--tasks", str(tmp_path / "none.jsonl")], [], ["--tasks", "reasoning-gym:no_such_task"]):
        r = run_cli("eval", str(tiny), *args)
        assert r.returncode != 0 and r.stderr.startswith("rlkv-edge: error:"), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("eval", str(tmp_path / "missing.gguf"), "--text", str(tmp_path))
    assert r.returncode != 0 and "model file not found" in r.stderr


class _RecordingLlm:
    """Stands in for llama_cpp.Llama: records the messages and answers with a fixed text."""

    def __init__(self, text: str) -> None:
        self.text, self.messages = text, []

    def reset(self) -> None:
        pass

    def create_chat_completion(self, messages: list, **_: object) -> dict:
        self.messages.append(messages)
        usage = {"completion_tokens": 3}
        return {"choices": [{"message": {"content": self.text}, "finish_reason": "stop"}], "usage": usage}


def test_run_tasks_system_prompt_and_whole_answer_reward() -> None:
    from rlkv_edge import tasks as T
    from rlkv_edge.evaluate import SYSTEM_PROMPT, Task, run_tasks

    task = Task("What is the code?", "4821")
    llm = _RecordingLlm("The code is 4821.\nIt was stated before the story.")
    default = run_tasks(llm, [task], max_tokens=8, label="x", sparsity=None)
    assert llm.messages[0][0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert default.accuracy == 0.0  # the last-line scorer reads "It was stated before the story."
    whole = run_tasks(llm, [task], max_tokens=8, label="x", sparsity=None, system=None, reward=T.recall_reward)
    assert llm.messages[1] == [{"role": "user", "content": "What is the code?"}]
    assert whole.accuracy == 1.0
    wrong = _RecordingLlm("It is 4812.")
    assert run_tasks(wrong, [task], max_tokens=8, label="x", sparsity=None, reward=T.recall_reward).accuracy == 0.0


def test_eval_bad_reward_one_line(tiny: Path, tmp_path: Path) -> None:
    tasks = tmp_path / "t.jsonl"
    tasks.write_text('{"prompt": "a", "answer": "b"}\n')
    for spec in ("no_such_reward", "rlkv_edge.tasks:no_such_function", "no_such_module:f"):
        r = run_cli("eval", str(tiny), "--tasks", str(tasks), "--reward", spec)
        assert r.returncode != 0 and r.stderr.startswith("rlkv-edge: error: --reward"), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_eval_key_recall_whole_answer_on_smollm2(tmp_path: Path) -> None:
    """The showcase task through `eval`: the full cache recalls the code, all-local heads cannot (problems
    sized for the default heads' S and W)."""
    from gguf_fixtures import smollm2_path

    from rlkv_edge import tasks as T
    from rlkv_edge.convert import convert_gguf
    from rlkv_edge.heads import load_heads
    from rlkv_edge.models import default_heads_path

    model = tmp_path / "smollm2.rlkv.gguf"
    heads = load_heads(default_heads_path())
    convert_gguf(smollm2_path(), heads, model, progress=False)
    problems = tmp_path / "recall.jsonl"
    T.write_jsonl(T.problems_for(3, T.EVAL_SEED, heads.sink_size, heads.window_size), problems)
    args = ["--tasks", str(problems), "-s", "1", "--max-tokens", "16", "--ctx", "768", "-t", "2", "--json"]
    r = run_cli("eval", str(model), *args, "--system", "", "--reward", "rlkv_edge.tasks:recall_reward")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    acc = {x["label"]: x["accuracy"] for x in out["tasks"]["results"]}
    assert acc == {"none": 1.0, "s=1": 0.0}
    assert out["tasks"]["system"] is None and out["tasks"]["reward"] == "rlkv_edge.tasks:recall_reward"


def test_tail_logprobs_equal_the_tail_of_all_logprobs(smollm2: Path) -> None:
    """KL over the last positions of a long text (no [n_ctx, n_vocab] array) scores exactly those positions."""
    from rlkv_edge.evaluate import compare_logprobs, read_text_file, tail_logprobs, text_logprobs
    from rlkv_edge.models import open_model

    body = read_text_file(Path("/usr/share/common-licenses/GPL-3")).encode("utf-8")
    kw = dict(n_ctx=400, n_threads=2, n_batch=64, n_ubatch=64)
    full = open_model(smollm2, logits_all=True, **kw)  # type: ignore[arg-type]
    tail = open_model(smollm2, logits_all=False, **kw)  # type: ignore[arg-type]
    try:
        tokens = full.tokenize(body, add_bos=True)[:320]
        want = text_logprobs(full, tokens)[-128:]
        # a 192-token prefix without logits, then 2 batches of 64: the same batches as `want`'s, so the same sums
        got = tail_logprobs(tail, tokens, 128)
        other = tail_logprobs(tail, tokens[:-1], 128)  # shifted by one position: must not match
    finally:
        full.close()
        tail.close()
    assert got.shape == want.shape
    kl, top1 = compare_logprobs(want, got)
    assert kl < 1e-6 and top1 == 1.0, (kl, top1)
    assert compare_logprobs(want, other)[0] > 100 * max(kl, 1e-6)
