"""Continuous batching (generate/batching.py): requests join and leave between decode steps, each with
the tokens it would get alone, and the per-row-position decode step of the Decoder it relies on."""

from __future__ import annotations

import pytest
import torch

from slmkit.errors import SlmError
from slmkit.generate import SamplingConfig, generate_tokens
from slmkit.generate.batching import CANCELLED, LENGTH, STOP, ContinuousBatcher, Request
from slmkit.models import build_model, get_preset

pytestmark = pytest.mark.usefixtures("one_thread")

GREEDY = SamplingConfig(temperature=0.0)


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-phi"])
def model(request):
    torch.manual_seed(0)
    cfg = get_preset(request.param).replace(n_layers=2, d_model=64, n_heads=4, vocab_size=300, max_seq_len=96)
    if request.param == "tiny-llama":
        cfg = cfg.replace(n_kv_heads=2)
    return build_model(cfg).eval()


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 300, (int(torch.randint(2, 20, (1,), generator=gen)),), generator=gen).tolist()
            for _ in range(n)]


def test_per_row_positions_step_equals_the_single_row_path(model):
    """Rows at different positions in one step give each row's own cached decode."""
    rows = prompts(3, seed=1)
    cache = model.new_cache(3, 64)
    with torch.inference_mode():
        expected = []
        for i, ids in enumerate(rows):
            alone = model.new_cache(1, 64)
            model(torch.tensor([ids[:-1]]), kv_cache=alone)
            expected.append(model(torch.tensor([ids[-1:]]), kv_cache=alone, start_pos=len(ids) - 1)[0, -1])
            for layer, (k, v) in zip(cache.layers, alone.layers):  # the prefix into row i of the shared cache
                layer[0][i, :, : len(ids) - 1] = k[0, :, : len(ids) - 1]
                layer[1][i, :, : len(ids) - 1] = v[0, :, : len(ids) - 1]
        positions = torch.tensor([len(ids) - 1 for ids in rows])
        got = model(torch.tensor([[ids[-1]] for ids in rows]), kv_cache=cache, cache_positions=positions)[:, -1]
    assert torch.allclose(got, torch.stack(expected), atol=1e-5)


def test_staggered_requests_get_the_tokens_they_get_alone(model):
    batcher = ContinuousBatcher(model, max_batch=4, max_len=96)
    lengths = [5, 17, 9, 30, 12, 3, 21]
    requests = [Request(p, n, GREEDY) for p, n in zip(prompts(len(lengths)), lengths)]
    # Requests arrive while others run: two now, one after 3 steps, the rest after 6; more than the 4 slots.
    for r in requests[:2]:
        batcher.submit(r)
    for step in range(1, 1000):
        if batcher.idle and all(r.done for r in requests):
            break
        if step == 3:
            batcher.submit(requests[2])
        if step == 6:
            for r in requests[3:]:
                batcher.submit(r)
        assert len(batcher.active) <= 4
        batcher.step()
    for r, n in zip(requests, lengths):
        alone = generate_tokens(model, [list(r.prompt_ids)], n, GREEDY)[0]
        assert r.tokens == alone and r.finish_reason == LENGTH and len(r.tokens) == n


def test_a_finished_request_frees_its_slot_at_once(model):
    batcher = ContinuousBatcher(model, max_batch=2, max_len=96)
    short, long, waiting = (Request(p, n, GREEDY) for p, n in zip(prompts(3, seed=2), (2, 40, 5)))
    for r in (short, long, waiting):
        batcher.submit(r)
    batcher.step()  # admits short and long (first tokens), decodes: short is done after 2 tokens
    assert short.done and waiting.slot is None
    batcher.step()  # the freed slot takes the waiting request now, while long keeps decoding
    assert waiting.slot is not None and long.slot is not None and not long.done


def test_eos_seed_streaming_and_cancel(model):
    batcher = ContinuousBatcher(model, max_batch=3, max_len=96)
    (p1, p2, p3) = prompts(3, seed=3)
    first = generate_tokens(model, [p1], 8, GREEDY)[0]
    stopped = batcher.submit(Request(p1, 8, GREEDY, eos_ids={first[3]}))
    seen: list[int] = []
    sampled = batcher.submit(Request(p2, 10, SamplingConfig(temperature=1.0), seed=7,
                                     on_token=lambda req, tok: seen.append(tok)))
    cancelled = batcher.submit(Request(p3, 50, GREEDY))
    batcher.step()
    cancelled.cancelled = True
    batcher.run_until_idle()
    assert stopped.finish_reason == STOP and stopped.tokens == first[:3]
    assert seen == sampled.tokens and len(seen) == 10
    again = ContinuousBatcher(model, max_batch=1, max_len=96)
    replay = again.submit(Request(p2, 10, SamplingConfig(temperature=1.0), seed=7))
    again.run_until_idle()
    assert replay.tokens == sampled.tokens  # a seeded request draws the same alone or beside others
    assert cancelled.finish_reason == CANCELLED and len(cancelled.tokens) < 50


def test_context_limit_and_bad_requests(model):
    batcher = ContinuousBatcher(model, max_batch=2, max_len=24)
    r = batcher.submit(Request(prompts(1)[0][:10], 100, GREEDY))
    batcher.run_until_idle()
    assert r.finish_reason == LENGTH and len(r.prompt_ids) + len(r.tokens) == 24
    with pytest.raises(SlmError, match="does not fit"):
        batcher.submit(Request(list(range(3, 27)), 4, GREEDY))
    with pytest.raises(SlmError, match="at least one token"):
        batcher.submit(Request([], 4, GREEDY))
    with pytest.raises(SlmError, match="max_new_tokens"):
        batcher.submit(Request([5], 0, GREEDY))
    with pytest.raises(SlmError, match="temperature"):
        batcher.submit(Request([5], 3, SamplingConfig(temperature=-1)))


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_models_batch_too(bits):
    import copy

    from slmkit.models.quantized import quantize_model

    torch.manual_seed(0)
    cfg = get_preset("tiny-llama").replace(n_layers=2, d_model=128, n_heads=4, vocab_size=320, max_seq_len=64)
    model = copy.deepcopy(build_model(cfg).eval())
    quantize_model(model, bits, None if bits == 8 else 64, False)
    batcher = ContinuousBatcher(model, max_batch=3, max_len=64)
    requests = [batcher.submit(Request(p, 12, GREEDY)) for p in prompts(5, seed=4)]
    batcher.run_until_idle()
    for r in requests:
        assert r.tokens == generate_tokens(model, [list(r.prompt_ids)], 12, GREEDY)[0]
