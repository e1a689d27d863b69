"""Encoding with search over the encoder's likeliest codes only (`encode_candidates`).

The tiny models and toy syllogisms are vqvae_toys.py's (K = 8 codes, so 8 candidates is the
exact search and 5-7 take two rounds of `search.FIRST_ROUND` = 4 codes then the rest).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from test_vqvae import toy_file  # noqa: F401 (a fixture)
from vqvae_toys import (
    SEARCH,
    TASK,
    code_log_likelihoods,
    random_batch,
    spread_search_model,
    target_log_probs,
    tiny_config,
    toy_examples,
)

import token_assorted.vqvae.search as search
from token_assorted.cli import main
from token_assorted.core.errors import ConfigError
from token_assorted.vqvae import VQVAE, encode_examples, load_vqvae, train_vqvae
from token_assorted.vqvae.chunks import chunk_examples, collate
from token_assorted.vqvae.decoding import greedy_tokens
from token_assorted.vqvae.search import best_fitting_codes, encoding_candidates

RECIPE = dict(autoregressive=True, local_context=1, copy_prefix=True)


def with_settings(model: VQVAE, **changes) -> VQVAE:
    """The same weights under other encoding settings."""
    other = VQVAE(dataclasses.replace(model.config, **changes), model.vocab)
    other.load_state_dict(model.state_dict())
    return other.eval()


@torch.no_grad()
def encoder_ranking(model: VQVAE, prompt, pad, chunk_ids, present) -> torch.Tensor:
    """(C, K) every real chunk's codes, the encoder's likeliest first."""
    latents = model.encode(chunk_ids, model.encode_prompt(prompt, pad), pad)
    return model.quantizer.classifier(latents[present][:, 0]).argsort(-1, descending=True)


@pytest.mark.parametrize("rerank", [0, 3])
def test_all_k_candidates_are_the_exact_search_bit_for_bit(rerank):
    model = spread_search_model(**RECIPE, search_rerank=rerank)
    batch = random_batch()
    exact = with_settings(model, encode_candidates=0).codes_of(*batch)
    assert torch.equal(with_settings(model, encode_candidates=8).codes_of(*batch), exact)  # N = K
    assert torch.equal(with_settings(model, encode_candidates=20).codes_of(*batch), exact)  # N > K: all K
    # All K codes listed in the encoder's order, not in code order, pick the same codes.
    prompt, pad, chunk_ids, present = batch
    with torch.no_grad():
        memory = model.encode_prompt(prompt, pad)
        ranked = best_fitting_codes(model, prompt, pad, chunk_ids, present, memory, encoder_ranking(model, *batch))
    assert torch.equal(ranked, exact[:, 0])
    assert len(set(exact.flatten().tolist())) > 1


@pytest.mark.parametrize("size", [3, 6])  # one round; two rounds (4 codes, then the other 2)
def test_fewer_candidates_give_the_likeliest_of_the_encoders_n_likeliest(size, monkeypatch):
    monkeypatch.setattr(search, "SURE", float("inf"))  # no chunk stops after the first round
    model = with_settings(spread_search_model(**RECIPE), encode_candidates=size)
    batch = random_batch()
    ranking = encoder_ranking(model, *batch)[:, :size]  # (C, N)
    likelihoods = code_log_likelihoods(model, *batch).T  # (C, K), one code at a time
    codes = model.codes_of(*batch)[:, 0]
    assert (ranking == codes[:, None]).any(1).all()  # every code among the encoder's N likeliest
    assert torch.equal(codes, ranking.gather(1, likelihoods.gather(1, ranking).argmax(1, keepdim=True))[:, 0])
    # Candidates without the likeliest codes: the likeliest of them, never the exact search's code.
    prompt, pad, chunk_ids, present = batch
    unlikely = likelihoods.argsort(1)[:, :size]  # (C, N) the least likely codes, in rising likelihood
    with torch.no_grad():
        chosen = best_fitting_codes(model, prompt, pad, chunk_ids, present, model.encode_prompt(prompt, pad),
                                    unlikely)
    assert torch.equal(chosen, unlikely[:, -1]) and not (chosen == likelihoods.argmax(1)).any()


def test_a_chunk_its_likeliest_first_codes_write_back_is_not_scored_again(monkeypatch):
    monkeypatch.setattr(search, "SURE", float("-inf"))  # every chunk stops after the first round
    scored = []
    score = search.token_log_likelihoods
    monkeypatch.setattr(search, "token_log_likelihoods",
                        lambda *args: scored.append(args[-1].shape[1]) or score(*args))
    model = with_settings(spread_search_model(**RECIPE), encode_candidates=6)
    batch = random_batch()
    ranking = encoder_ranking(model, *batch)[:, :search.FIRST_ROUND]
    likelihoods = code_log_likelihoods(model, *batch).T
    codes = model.codes_of(*batch)[:, 0]
    assert scored and set(scored) == {search.FIRST_ROUND}
    assert torch.equal(codes, ranking.gather(1, likelihoods.gather(1, ranking).argmax(1, keepdim=True))[:, 0])


def test_tokens_given_more_than_half_the_probability_are_written_back(toy_file, tmp_path):
    # The first round's stop and the re-ranking's short cut rest on this: where the decoder,
    # teacher-forced, gives each of a chunk's tokens more than half the probability under a
    # code, greedy decoding under that code writes the chunk back.
    out = train_vqvae(tiny_config(toy_file, tmp_path / "run", **SEARCH, **RECIPE, steps=150))
    model = load_vqvae(out).model
    items = chunk_examples(load_vqvae(out).tokenizer, TASK, toy_examples(), model.config.chunk_size)
    batch = collate(items, model.vocab.pad_id, model.config.max_prompt_len)
    prompt, pad, chunk_ids, present = batch.prompt_ids, batch.prompt_pad, batch.chunk_ids, batch.chunk_present
    owner, index = present.nonzero().unbind(1)
    codes = torch.arange(model.config.codebook_size)
    with torch.no_grad():
        memory = model.encode_prompt(prompt, pad)
        vectors = model.quantizer.vectors(codes)[None, :, None].expand(len(owner), -1, -1, -1)
        decoded = greedy_tokens(model, vectors, index[:, None].expand(-1, len(codes)), memory[owner], pad[owner],
                                prompt[owner])  # (C, K, L)
    log_p = torch.stack([code_log_likelihoods_per_token(model, batch, code) for code in codes], 1)  # (C, K, L)
    sure = log_p.min(-1).values > search.SURE
    assert sure.sum() >= 4 and (~sure).sum() >= 4
    assert (decoded[sure] == batch.targets[:, None].expand_as(decoded)[sure]).all()


def code_log_likelihoods_per_token(model: VQVAE, batch, code: int) -> torch.Tensor:
    """(C, L) each real chunk's teacher-forced log p of its tokens under one code, the library decoder's way."""
    prompt, pad, chunk_ids, present = batch.prompt_ids, batch.prompt_pad, batch.chunk_ids, batch.chunk_present
    with torch.no_grad():
        memory = model.encode_prompt(prompt, pad)
        grid = model.quantizer.vectors(torch.full(present.shape, code))[:, :, None]
        hidden = model.decode(grid, memory, pad, chunk_ids)
        return target_log_probs(model, hidden, memory, pad, prompt, chunk_ids[present], present,
                                model.prefix_of(chunk_ids))


def test_encoding_candidates_are_the_likeliest_or_all():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0], [5.0, 0.0, 1.0, -2.0]])
    assert encoding_candidates(logits, 2).tolist() == [[1, 3], [0, 2]]
    for size in (0, 4, 9):
        assert encoding_candidates(logits, size).tolist() == [[0, 1, 2, 3]] * 2


def test_encode_candidates_is_checked_recorded_and_overridden(toy_file, tmp_path):
    with pytest.raises(ValueError, match="encode_candidates"):
        spread_search_model(encode_candidates=-1)
    with pytest.raises(ValueError, match="search_rerank: re-ranks 5 codes, more than the encode_candidates"):
        spread_search_model(encode_candidates=4, search_rerank=5)
    with pytest.raises(ConfigError, match="search_rerank: re-ranks 5 codes, more than the encode_candidates"):
        tiny_config(toy_file, tmp_path / "x", **SEARCH, encode_candidates=4, search_rerank=5)
    out = train_vqvae(tiny_config(toy_file, tmp_path / "s", **SEARCH, encode_candidates=3, steps=10))
    assert json.loads((out / "config.json").read_text())["model"]["encode_candidates"] == 3
    assert load_vqvae(out, encode_candidates=0).config.encode_candidates == 0
    with pytest.raises(ConfigError, match="encode_candidates"):
        load_vqvae(out, encode_candidates=-2)
    exact = encode_examples(load_vqvae(out, encode_candidates=0), TASK, toy_examples())
    assert exact == encode_examples(load_vqvae(out, encode_candidates=8), TASK, toy_examples())  # 8 = K: all
    written = tmp_path / "codes.json"
    assert main(["vqvae", "encode", "--vqvae", str(out), "--data", str(toy_file), "--out", str(written),
                 "--encode-candidates", "0"]) == 0
    assert json.loads(written.read_text())["codes"] == exact
    assert main(["vqvae", "encode", "--vqvae", str(out), "--data", str(toy_file), "--out", str(written),
                 "--encode-candidates", "-1"]) == 2
