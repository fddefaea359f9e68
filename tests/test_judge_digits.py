"""Reading an integer reply 0-100 from a judge whose tokenizer splits numbers into digits: the
digit trie over hand-made top logprobs, then the api judge against a fake endpoint (no server), for
how it detects the tokenizer, when it follows continuations, when it refuses, and its cache key."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletion

from traitloop.config import JudgeConfig
from traitloop.errors import UserError
from traitloop.judges.api import ApiJudge
from traitloop.judges.prompts import (
    FOLLOW_MIN_P,
    has_multidigit_number,
    prefixes_to_follow,
    read_logprobs,
    read_reply_trie,
    reply_prefixes,
)
from traitloop.traits import load_trait

END = "<|im_end|>"


def lp(p: float) -> float:
    return math.log(p)


# ---- the digit trie, on hand-made top logprobs -----------------------------------------------


def test_a_split_85_reads_85_where_the_first_token_reads_8():
    tops = {"": [("8", lp(0.9)), ("The", lp(0.1))]}
    assert read_logprobs(tops[""]).value == pytest.approx(8)  # the bug this module fixes
    assert prefixes_to_follow(tops) == ["8"]
    tops["8"] = [("5", lp(0.95)), (END, lp(0.05))]
    assert prefixes_to_follow(tops) == []  # 85 cannot go on to an integer <= 100
    reading = read_reply_trie(tops)
    # P(85) = 0.9 * 0.95; P(8) = 0.9 * 0.05 (the reply stopped after "8")
    assert reading.value == pytest.approx((85 * 0.855 + 8 * 0.045) / 0.9)
    assert reading.number_mass == pytest.approx(0.9)


def test_100_is_followed_over_two_levels_and_a_stop_needs_no_further_digit():
    tops = {"": [("1", lp(0.8)), ("9", lp(0.2))]}
    assert sorted(prefixes_to_follow(tops)) == ["1", "9"]
    tops["1"] = [("0", lp(0.9)), ("5", lp(0.1))]
    tops["9"] = [("0", lp(0.5)), (END, lp(0.5))]
    assert prefixes_to_follow(tops) == ["10"]  # 15 and 90 are complete; 10 may become 100
    tops["10"] = [("0", lp(0.7)), ("5", lp(0.1)), (END, lp(0.2))]  # "105" is no valid reply
    numbers = {100: 0.8 * 0.9 * 0.7, 10: 0.8 * 0.9 * 0.2, 15: 0.8 * 0.1, 90: 0.2 * 0.5, 9: 0.2 * 0.5}
    reading = read_reply_trie(tops)
    assert reading.number_mass == pytest.approx(sum(numbers.values()))
    assert reading.value == pytest.approx(sum(n * p for n, p in numbers.items()) / sum(numbers.values()))


def test_a_prefix_is_text_so_a_whole_token_and_its_digits_meet():
    tops = {"": [("10", lp(0.5)), ("1", lp(0.5))], "1": [("0", lp(1.0))]}
    assert reply_prefixes(tops) == {"10": pytest.approx(1.0), "1": pytest.approx(0.5)}
    assert prefixes_to_follow(tops) == ["10"]


def test_unlikely_prefixes_are_not_followed_and_never_read_as_their_first_digit():
    tops = {"": [("9", lp(0.99)), ("1", lp(FOLLOW_MIN_P / 2))], "9": [("0", lp(1.0))]}
    assert prefixes_to_follow(tops) == []
    reading = read_reply_trie(tops)
    assert reading.value == pytest.approx(90)  # "1" is left out, not counted as 1
    assert reading.number_mass == pytest.approx(0.99)


def test_labels_and_low_mass_follow_the_protocol():
    tops = {"": [("REF", lp(0.6)), ("8", lp(0.3))], "8": [("5", lp(1.0))]}
    assert read_reply_trie(tops).reason == "refusal"
    tops = {"": [("I", lp(0.9)), ("8", lp(0.1))], "8": [("5", lp(1.0))]}
    assert read_reply_trie(tops).reason == "low number mass (0.10)"
    assert read_reply_trie(tops, min_mass=0.05).value == pytest.approx(85)
    assert read_reply_trie({"": [("I", lp(1.0))]}, min_mass=0.0).value is None  # no integer at all: no score


def test_a_multidigit_token_proves_whole_number_tokens():
    assert has_multidigit_number([("I", lp(0.5)), ("85", lp(0.1)), ("8", lp(0.1))])
    assert not has_multidigit_number([("8", lp(0.5)), ("9", lp(0.1)), ("The", lp(0.1))])
    assert not has_multidigit_number([("²", lp(0.5)), ("250", lp(0.1))])  # not integers 0-100


# ---- the api judge against a fake endpoint ---------------------------------------------------


class FakeModel:
    """A judge model whose reply to any prompt is drawn from `replies` (text -> probability), written
    with a tokenizer that splits numbers into digits or keeps them whole. It answers like vLLM's chat
    endpoint: the next-token top logprobs after the (optionally prefilled) reply, and /tokenize."""

    def __init__(self, replies: dict[str, float], split: bool = True, tokenize: bool = True, continues: bool = True):
        self.replies, self.split, self.tokenize, self.continues = replies, split, tokenize, continues
        self.logprobs = True
        self.requests: list[dict] = []  # every chat request, as sent
        self.tokenized: list[str] = []  # the text of every /tokenize request

    def tokens(self, text: str) -> list[str]:
        return re.findall(r"\d|\D+" if self.split else r"\d+|\D+", text)

    def next_top(self, prefix: str) -> list[tuple[str, float]]:
        probs: dict[str, float] = {}
        for reply, p in self.replies.items():
            text = ""
            for token in [*self.tokens(reply), END]:
                if text == prefix:
                    probs[token] = probs.get(token, 0.0) + p
                    break
                text += token
        total = sum(probs.values())
        return sorted(((t, math.log(p / total)) for t, p in probs.items()), key=lambda tp: -tp[1])[:20]


def _status_error(cls, code: int, message: str):
    return cls(message, response=httpx2.Response(code, request=httpx2.Request("POST", "http://fake/v1")), body=None)


class FakeClient:
    def __init__(self, model: FakeModel):
        self.model = model
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))

    async def create(self, *, model, messages, max_tokens, temperature, logprobs, top_logprobs, extra_body=None):
        self.model.requests.append({"messages": messages, "max_tokens": max_tokens, "extra_body": extra_body})
        prefill = ""
        if messages[-1]["role"] == "assistant":
            if not self.model.continues or not (extra_body or {}).get("continue_final_message"):
                raise _status_error(openai.BadRequestError, 400, "Unrecognized request argument: continue_final_message")
            prefill = messages[-1]["content"]
        top = self.model.next_top(prefill)
        greedy = max(self.model.replies, key=self.model.replies.get)
        text = "".join(self.model.tokens(greedy)[:max_tokens]) if not prefill else top[0][0]
        entry = {
            "token": top[0][0],
            "logprob": top[0][1],
            "bytes": None,
            "top_logprobs": [{"token": t, "logprob": v, "bytes": None} for t, v in top],
        }
        return ChatCompletion.model_validate(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "length",
                        "message": {"role": "assistant", "content": text},
                        "logprobs": {"content": [entry]} if self.model.logprobs else None,
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
            }
        )

    async def post(self, url, *, cast_to, body):
        self.model.tokenized.append(body["prompt"])
        if not (self.model.tokenize and url.endswith("/tokenize")):
            raise _status_error(openai.NotFoundError, 404, "Not Found")
        return {"tokens": list(range(len(self.model.tokens(body["prompt"]))))}

    async def close(self):
        pass


def judge(fake: FakeModel, tmp_path, client=FakeClient, **overrides) -> ApiJudge:
    config = {"kind": "api", "model": "fake", "base_url": "http://fake/v1", "max_attempts": 2, "backoff_s": 0.01, **overrides}
    return ApiJudge(JudgeConfig(**config), load_trait("bliss"), cache_path=tmp_path / "cache.sqlite", make_client=lambda: client(fake))


def continuations(model: FakeModel) -> list[str]:
    return [r["messages"][-1]["content"] for r in model.requests if r["messages"][-1]["role"] == "assistant"]


def test_a_splitting_tokenizer_is_detected_and_its_replies_followed_to_the_exact_number(tmp_path):
    model = FakeModel({"85": 0.7, "100": 0.2, "9": 0.1})
    j = judge(model, tmp_path)
    reading = j.read(["How blissful?"])[0]
    assert j.number_tokens == "split"
    assert reading.value == pytest.approx(85 * 0.7 + 100 * 0.2 + 9 * 0.1)
    assert reading.number_mass == pytest.approx(1.0)
    assert sorted(continuations(model)) == ["1", "10", "8", "9"]
    prefilled = [r for r in model.requests if r["messages"][-1]["role"] == "assistant"]
    assert all(r["extra_body"] == {"continue_final_message": True, "add_generation_prompt": False} for r in prefilled)
    assert j.usage["continuations"] == 4 and j.info()["number_tokens"] == "split"


def test_whole_number_tokens_are_read_from_the_first_token_alone(tmp_path):
    model = FakeModel({"85": 0.7, "100": 0.2, "9": 0.1}, split=False)
    j = judge(model, tmp_path)
    assert j.read(["How blissful?"])[0].value == pytest.approx(85 * 0.7 + 100 * 0.2 + 9 * 0.1)
    assert j.number_tokens == "whole" and continuations(model) == []


def test_without_a_tokenizer_endpoint_a_multidigit_first_token_is_proof_enough(tmp_path):
    whole = FakeModel({"85": 0.7, "9": 0.3}, split=False, tokenize=False, continues=False)
    j = judge(whole, tmp_path / "a")
    assert j.read(["How blissful?"])[0].value == pytest.approx(85 * 0.7 + 9 * 0.3)
    assert j.number_tokens == "unknown" and continuations(whole) == []

    split = FakeModel({"85": 0.7, "9": 0.3}, tokenize=False)  # only single digits in the top-20: followed
    j = judge(split, tmp_path / "b")
    assert j.read(["How blissful?"])[0].value == pytest.approx(85 * 0.7 + 9 * 0.3)
    assert j.number_tokens == "unknown" and sorted(continuations(split)) == ["8", "9"]


@pytest.mark.parametrize("tokenize", [True, False])
def test_an_endpoint_that_cannot_continue_a_split_reply_is_refused_not_read_as_a_first_digit(tmp_path, tokenize):
    model = FakeModel({"85": 1.0}, tokenize=tokenize, continues=False)
    with pytest.raises(UserError, match=r"refused to continue a prefilled assistant reply \(HTTP 400.*turn 85\s+into 8"):
        judge(model, tmp_path).read(["How blissful?"])


def test_without_logprobs_the_whole_reply_text_is_read_not_its_first_token(tmp_path):
    model = FakeModel({"85": 1.0})
    model.logprobs = False
    j = judge(model, tmp_path)
    assert j.read(["How blissful?"])[0].value == 85
    assert [r["max_tokens"] for r in model.requests] == [1, 8]


def test_a_failed_continuation_fails_the_reading_and_is_asked_again_next_time(tmp_path):
    model = FakeModel({"85": 1.0})

    class FlakyClient(FakeClient):
        """Answers 500 to the first two continuations it is asked for."""

        failures_left = 2

        async def create(self, **kwargs):
            if kwargs["messages"][-1]["role"] == "assistant" and FlakyClient.failures_left:
                FlakyClient.failures_left -= 1
                raise _status_error(openai.InternalServerError, 500, "boom")
            return await super().create(**kwargs)

    j = judge(model, tmp_path, client=FlakyClient)
    failed = j.read(["How blissful?"])[0]
    assert failed.value is None and failed.reason == "failed after 2 attempts: 500 server error"
    assert j.read(["How blissful?"])[0].value == pytest.approx(85)  # not cached: asked again, now it works


def test_the_cache_key_holds_the_endpoint_and_every_reading_parameter(tmp_path):
    model = FakeModel({"85": 1.0})
    judge(model, tmp_path).read(["How blissful?"])
    asked = len(model.requests)
    assert judge(model, tmp_path).read(["How blissful?"])[0].value == pytest.approx(85)
    assert len(model.requests) == asked  # same endpoint, model, prompt and reading: from the cache

    for changed in [{"base_url": "http://other/v1"}, {"min_number_mass": 0.1}, {"model": "fake-2"}]:
        judge(model, tmp_path, **changed).read(["How blissful?"])
        assert len(model.requests) > asked, changed
        asked = len(model.requests)

    model.tokenize = False  # the same endpoint, read another way (its tokenizer now unknown)
    judge(model, tmp_path).read(["How blissful?"])
    assert len(model.requests) > asked


@pytest.mark.parametrize("split", [True, False])
def test_detection_runs_once_per_judge_and_asks_no_more_than_it_needs(tmp_path, split):
    model = FakeModel({"85": 1.0}, split=split)
    j = judge(model, tmp_path)
    assert j.detect() == ("split" if split else "whole") and j.detect() == j.number_tokens
    j.read(["a", "b"])
    if split:  # "10" in two tokens settles it
        assert model.tokenized == ["10"]
    else:  # whole-number tokens: every integer 10-100 is checked
        assert sorted(model.tokenized, key=int) == [str(n) for n in range(10, 101)]
