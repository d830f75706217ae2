"""The batching loop: batched greedy equals unbatched, joining and leaving, queue, deadline."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
import torch

from generator_service.batching import (
    BatchingEngine,
    GenerationHandle,
    SamplingParams,
    banned_ngram_tokens,
    cut_at_stop,
    find_stop,
    held_back,
)
from generator_service.errors import (
    DeadlineExceeded,
    GenerationFailed,
    ModelNotLoaded,
    QueueFull,
)
from generator_service.model import LoadedModel

PROMPTS = [
    "How much does the Comfort+ plan cost?",
    "What is the Household plan?",
    "Hi",
    "The thermostat shows a wifi error after the firmware update, what should I do first?",
    "Can I schedule the fan?",
]
LOOP_BREAKERS = SamplingParams(
    max_new_tokens=24, min_new_tokens=1, no_repeat_ngram_size=3, repetition_penalty=1.2
)


def encode(loaded: LoadedModel, text: str) -> list[int]:
    return loaded.tokenizer(text)["input_ids"]


def decode(loaded: LoadedModel):
    return lambda ids: loaded.tokenizer.decode(ids, skip_special_tokens=True)


@pytest.fixture
def engine_factory(tiny_loaded: LoadedModel):
    made: list[BatchingEngine] = []

    def make(**kwargs) -> BatchingEngine:
        kwargs.setdefault("eos_token_id", tiny_loaded.eos_token_id)
        engine = BatchingEngine(
            tiny_loaded.model,
            context_tokens=tiny_loaded.context_tokens,
            decode=decode(tiny_loaded),
            **kwargs,
        )
        engine.start()
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.stop()


def deadline(seconds: float = 60.0) -> float:
    return time.monotonic() + seconds


def test_greedy_matches_transformers_generate(tiny_loaded: LoadedModel, engine_factory) -> None:
    engine = engine_factory(max_batch_size=8)
    params = SamplingParams(max_new_tokens=20)
    handles = [engine.submit(encode(tiny_loaded, p), params, deadline()) for p in PROMPTS]
    for prompt, handle in zip(PROMPTS, handles, strict=True):
        ids = torch.tensor([encode(tiny_loaded, prompt)])
        expected = tiny_loaded.model.generate(
            ids, max_new_tokens=20, do_sample=False, pad_token_id=tiny_loaded.eos_token_id
        )[0, ids.shape[1] :].tolist()
        result = handle.result()
        assert result.text == decode(tiny_loaded)(expected).strip()
        assert result.completion_tokens == 20
        assert result.prompt_tokens == ids.shape[1]


def test_batched_greedy_equals_unbatched(tiny_loaded: LoadedModel, engine_factory) -> None:
    engine = engine_factory(max_batch_size=8)
    alone = [
        engine.submit(encode(tiny_loaded, p), LOOP_BREAKERS, deadline()).result() for p in PROMPTS
    ]
    together = [engine.submit(encode(tiny_loaded, p), LOOP_BREAKERS, deadline()) for p in PROMPTS]
    assert [h.result() for h in together] == alone


def test_requests_join_and_leave_a_running_batch(tiny_loaded: LoadedModel, engine_factory) -> None:
    steps: list[tuple[str, int]] = []
    engine = engine_factory(
        max_batch_size=4, on_step=lambda kind, rows, *_: steps.append((kind, rows))
    )
    long_params = SamplingParams(max_new_tokens=60, no_repeat_ngram_size=3)
    short_params = SamplingParams(max_new_tokens=5, no_repeat_ngram_size=3)
    alone_long = engine.submit(encode(tiny_loaded, PROMPTS[3]), long_params, deadline()).result()
    alone_short = [
        engine.submit(encode(tiny_loaded, p), short_params, deadline()).result()
        for p in PROMPTS[:3]
    ]

    long_handle = engine.submit(encode(tiny_loaded, PROMPTS[3]), long_params, deadline())
    pieces = long_handle.stream()
    next(pieces)  # the long request is decoding: the next ones join it mid-flight
    joined = [engine.submit(encode(tiny_loaded, p), short_params, deadline()) for p in PROMPTS[:3]]
    assert [h.result() for h in joined] == alone_short
    for _ in pieces:
        pass
    assert long_handle.final == alone_long
    # They really shared forward passes with the long one.
    assert max(rows for kind, rows in steps if kind == "decode") == 4


def test_eos_stops_and_is_not_returned(tiny_loaded: LoadedModel, engine_factory) -> None:
    ids = encode(tiny_loaded, PROMPTS[0])
    free = SamplingParams(max_new_tokens=12)
    reference = engine_factory().submit(ids, free, deadline())
    reference.result()
    generated = reference._token_ids
    # Pretend the model's 4th token is EOS: generation must stop right there.
    stop_token = generated[3]
    first = generated.index(stop_token)
    engine = engine_factory(eos_token_id=stop_token)
    result = engine.submit(ids, free, deadline()).result()
    assert result.finish_reason == "stop"
    assert result.completion_tokens == first + 1
    assert result.text == decode(tiny_loaded)(generated[:first]).strip()


def test_any_stop_token_ends_the_answer(tiny_loaded: LoadedModel, engine_factory) -> None:
    ids = encode(tiny_loaded, PROMPTS[0])
    free = SamplingParams(max_new_tokens=12)
    reference = engine_factory().submit(ids, free, deadline())
    reference.result()
    generated = reference._token_ids
    # An end-of-turn token other than EOS (ChatML's <|im_end|>, say) stops generation as EOS does.
    stop_token = generated[2]
    first = generated.index(stop_token)
    engine = engine_factory(stop_token_ids=[stop_token])
    result = engine.submit(ids, free, deadline()).result()
    assert (result.finish_reason, result.completion_tokens) == ("stop", first + 1)
    assert result.text == decode(tiny_loaded)(generated[:first]).strip()


def test_a_stop_string_ends_the_answer_and_never_reaches_the_stream(
    tiny_loaded: LoadedModel, engine_factory
) -> None:
    ids = encode(tiny_loaded, PROMPTS[3])
    free = SamplingParams(max_new_tokens=24)
    full = engine_factory().submit(ids, free, deadline()).result().text
    # Stop at a piece of the middle of the text: what comes before it is the answer, the rest
    # is not (random weights write no words, so the piece is characters that first occur there).
    at = next(
        i
        for i in range(len(full) // 3, len(full) - 3)
        if full.find(full[i : i + 3]) == i and "\ufffd" not in full[i : i + 3]
    )
    stop = full[at : at + 3]
    engine = engine_factory()
    handle = engine.submit(ids, SamplingParams(max_new_tokens=24, stop=(stop,)), deadline())
    pieces = list(handle.stream())
    result = handle.final
    assert result is not None
    assert result.finish_reason == "stop"
    assert result.text == full[: full.index(stop)].strip()
    assert "".join(pieces).strip() == result.text
    assert result.completion_tokens < len(tiny_loaded.tokenizer(full)["input_ids"])


def test_min_new_tokens_suppresses_early_eos(tiny_loaded: LoadedModel, engine_factory) -> None:
    ids = encode(tiny_loaded, PROMPTS[1])
    first_token = engine_factory().submit(ids, SamplingParams(max_new_tokens=1), deadline())
    first_token.result()
    engine = engine_factory(eos_token_id=first_token._token_ids[0])
    assert engine.submit(ids, SamplingParams(max_new_tokens=3), deadline()).result().text == ""
    result = engine.submit(
        ids, SamplingParams(max_new_tokens=3, min_new_tokens=1), deadline()
    ).result()
    assert result.completion_tokens >= 2


def test_no_repeat_ngram_in_generated_text(tiny_loaded: LoadedModel, engine_factory) -> None:
    engine = engine_factory()
    handle = engine.submit(
        encode(tiny_loaded, "Hi"),
        SamplingParams(max_new_tokens=80, no_repeat_ngram_size=2),
        deadline(),
    )
    handle.result()
    tokens = handle._token_ids
    bigrams = list(itertools.pairwise(tokens))
    assert len(bigrams) == len(set(bigrams))


def test_banned_ngram_tokens() -> None:
    assert banned_ngram_tokens([1, 2, 3, 1, 2], 3) == [3]
    assert banned_ngram_tokens([1, 2, 3], 0) == []
    assert sorted(banned_ngram_tokens([5, 6, 5], 1)) == [5, 5, 6]


def test_sampling_is_reproducible_with_a_seed(tiny_loaded: LoadedModel, engine_factory) -> None:
    engine = engine_factory()
    ids = encode(tiny_loaded, PROMPTS[0])
    params = SamplingParams(max_new_tokens=16, do_sample=True, temperature=1.5, top_p=0.9, seed=3)
    first = engine.submit(ids, params, deadline()).result()
    again = engine.submit(ids, params, deadline()).result()
    assert first == again


def test_full_queue_is_refused_with_retry_after(
    tiny_loaded: LoadedModel, engine_factory, forward_gate
) -> None:
    engine = engine_factory(max_batch_size=1, max_queue=1, retry_after_s=7)
    ids = encode(tiny_loaded, "Hi")
    params = SamplingParams(max_new_tokens=3)
    running = engine.submit(ids, params, deadline())
    assert forward_gate.entered.wait(10)  # the first request holds the only row
    waiting = engine.submit(ids, params, deadline())
    with pytest.raises(QueueFull) as info:
        engine.submit(ids, params, deadline())
    assert info.value.status == 429
    assert info.value.headers["Retry-After"] == "7"
    forward_gate.open()
    assert running.result().completion_tokens == 3
    assert waiting.result().completion_tokens == 3


def test_deadline_while_waiting(tiny_loaded: LoadedModel, engine_factory, forward_gate) -> None:
    engine = engine_factory(max_batch_size=1)
    ids = encode(tiny_loaded, "Hi")
    running = engine.submit(ids, SamplingParams(max_new_tokens=2), deadline())
    assert forward_gate.entered.wait(10)
    late = engine.submit(ids, SamplingParams(max_new_tokens=2), time.monotonic() + 0.05)
    with pytest.raises(DeadlineExceeded):
        late.result()
    forward_gate.open()
    assert running.result().completion_tokens == 2


def test_a_failed_step_fails_its_batch_and_the_loop_goes_on(
    tiny_loaded: LoadedModel, engine_factory, forward_gate
) -> None:
    engine = engine_factory()
    ids = encode(tiny_loaded, "Hi")
    forward_gate.fail_next = True
    doomed = engine.submit(ids, SamplingParams(max_new_tokens=4), deadline())
    forward_gate.open()
    with pytest.raises(GenerationFailed):
        doomed.result()
    assert engine.submit(ids, SamplingParams(max_new_tokens=4), deadline()).result()
    assert engine.is_alive()


def test_cancelled_request_leaves_the_batch(tiny_loaded: LoadedModel, engine_factory) -> None:
    engine = engine_factory()
    ids = encode(tiny_loaded, PROMPTS[0])
    params = SamplingParams(max_new_tokens=200)
    kept_alone = engine.submit(ids, SamplingParams(max_new_tokens=30), deadline()).result()
    doomed = engine.submit(ids, params, deadline())
    kept = engine.submit(ids, SamplingParams(max_new_tokens=30), deadline())
    next(doomed.stream())
    doomed.cancel()
    assert kept.result() == kept_alone


def test_stop_answers_waiting_requests(tiny_loaded: LoadedModel, engine_factory) -> None:
    engine = engine_factory()
    engine.stop()
    with pytest.raises(Exception, match="not running"):
        engine.submit(encode(tiny_loaded, "Hi"), SamplingParams(), deadline())


def test_concurrent_submitters(tiny_loaded: LoadedModel, engine_factory) -> None:
    engine = engine_factory(max_batch_size=3, max_queue=16)
    params = SamplingParams(max_new_tokens=10, no_repeat_ngram_size=3)
    expected = {
        p: engine.submit(encode(tiny_loaded, p), params, deadline()).result() for p in PROMPTS
    }
    results: dict[int, object] = {}

    def worker(i: int) -> None:
        prompt = PROMPTS[i % len(PROMPTS)]
        results[i] = (
            prompt,
            engine.submit(encode(tiny_loaded, prompt), params, deadline()).result(),
        )

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 10
    for prompt, result in results.values():
        assert result == expected[prompt]


def test_calls_and_steps_run_on_the_model_thread(tiny_loaded: LoadedModel) -> None:
    """The loop runs on the thread given to it, and ``call`` runs work there between steps."""
    from concurrent.futures import ThreadPoolExecutor

    model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-model")
    owner = model_thread.submit(threading.current_thread).result()
    engine = BatchingEngine(
        tiny_loaded.model,
        eos_token_id=tiny_loaded.eos_token_id,
        context_tokens=tiny_loaded.context_tokens,
        decode=decode(tiny_loaded),
    )
    engine.start(model_thread)
    try:
        assert engine.is_alive()
        assert engine.call(threading.current_thread) is owner
        with pytest.raises(ZeroDivisionError):
            engine.call(lambda: 1 / 0)
        ids = tiny_loaded.tokenizer("hello there")["input_ids"]
        handle = engine.submit(ids, SamplingParams(max_new_tokens=4), time.monotonic() + 60)
        assert handle.result().completion_tokens >= 1
    finally:
        engine.stop()
        model_thread.shutdown(wait=True)
    assert not engine.is_alive()
    with pytest.raises(ModelNotLoaded):
        engine.call(threading.current_thread)


def test_find_and_cut_at_the_first_stop_string() -> None:
    stops = ("Question:", "\nUser:")
    assert find_stop("It costs $5.99.\nQuestion: and", stops) == len("It costs $5.99.\n")
    assert find_stop("no stop here", stops) == -1
    assert cut_at_stop("A.\nUser: B Question: C", stops) == "A."
    assert cut_at_stop("plain", ()) == "plain"


def test_held_back_is_the_longest_tail_that_may_begin_a_stop_string() -> None:
    stops = ("Question:", "\nUser:")
    assert held_back("It costs $5.99. Quest", stops) == len("Quest")
    assert held_back("It costs $5.99.\n", stops) == 1
    assert held_back("It costs $5.99.", stops) == 0
    assert held_back("Q", ("Question:",)) == 1


def test_the_stream_holds_back_a_possible_stop_string_until_it_is_decided() -> None:
    # Token ids are characters here, so each push adds one character to the text.
    text = "Yes. Quick. Question: no"
    handle = GenerationHandle(
        3, time.monotonic() + 5, lambda ids: "".join(map(chr, ids)), stop=("Question:",)
    )
    for char in text[: text.index("Question:") + len("Question:")]:
        handle._push("token", ord(char))
    handle._push("done", ("stop", 20))
    shown = ""
    for piece in handle.stream():
        shown += piece
        # Never a prefix of the stop string beyond what "Quick." explains.
        assert "Question"[:3] not in shown.split("Quick.")[-1], shown
    assert handle.final is not None
    assert shown.strip() == handle.final.text == "Yes. Quick."


def test_result_decodes_once_and_equals_the_drained_stream() -> None:
    text = "  Yes. Quick. Question: no"
    calls = []

    def decode_chars(ids: list[int]) -> str:
        calls.append(len(ids))
        return "".join(map(chr, ids))

    def handle_with_events() -> GenerationHandle:
        handle = GenerationHandle(3, time.monotonic() + 5, decode_chars, stop=("Question:",))
        for char in text:
            handle._push("token", ord(char))
        handle._push("done", ("stop", len(text)))
        return handle

    streamed = handle_with_events()
    shown = "".join(streamed.stream())
    calls.clear()
    waited = handle_with_events()
    result = waited.result()
    assert calls == [len(text)]  # one decode of the whole answer, none per token
    assert result == streamed.final
    assert result.text == shown.strip() == "Yes. Quick."
    assert waited.final == result


def test_result_raises_the_loops_error_and_the_deadline() -> None:
    failed = GenerationHandle(1, time.monotonic() + 5, lambda ids: "")
    failed._push("token", 1)
    failed._push("error", GenerationFailed("boom"))
    with pytest.raises(GenerationFailed):
        failed.result()
    late = GenerationHandle(1, time.monotonic() + 0.05, lambda ids: "")
    with pytest.raises(DeadlineExceeded):
        late.result()
    assert late.cancelled
