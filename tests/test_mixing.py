"""Stage-2 sequences: exact tokens and label masks per strategy, redraws, resumable draws."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from token_assorted.core.errors import CheckpointError, ConfigError
from token_assorted.data.encoding import EncodedExample
from token_assorted.data.latent_tokens import ChunkLayout, LatentVocab
from token_assorted.lm.methods import METHOD_NAMES
from token_assorted.lm.mixing import (
    IGNORE_INDEX,
    Curriculum,
    Pause,
    PoissonReplace,
    TokenAssorted,
    build_sequence,
    check_codes,
    chunks_for_m,
    make_strategy,
    max_latent_chunks,
    max_sequence_length,
    prefix_mask,
    replace_chunks,
)

BO, EO, Z0 = 100, 101, 102  # <boLatent>, <eoLatent>, <latent_0>
VOCAB = LatentVocab(codebook_size=4, begin_id=BO, end_id=EO, first_code_id=Z0)
LAYOUT = ChunkLayout(chunk_size=2, latents_per_chunk=1, vocab=VOCAB)
# prompt [bos 10 11], trace of 5 tokens = 3 chunks (the last one partial), solution [30 eos]
EXAMPLE = EncodedExample(prompt_ids=[1, 10, 11], trace_ids=[20, 21, 22, 23, 24], solution_ids=[30, 2])
CODES = [0, 1, 2]  # one code per chunk
PROMPT = [1, 10, 11]
MASKED = [IGNORE_INDEX] * 3


def build(strategy, epoch=0, index=0, seed=0):
    return build_sequence(strategy, EXAMPLE, CODES, LAYOUT, seed=seed, epoch=epoch, index=index)


@pytest.mark.parametrize("name, expected", [
    ("cot", [20, 21, 22, 23, 24, 30, 2]),
    ("sol-only", [30, 2]),
    ("all-replace", [BO, Z0 + 0, Z0 + 1, Z0 + 2, EO, 30, 2]),
    ("curriculum", [20, 21, 22, 23, 24, 30, 2]),  # stage 0 at epoch 0 is plain CoT
])
def test_deterministic_strategies_exact_tokens_and_labels(name, expected):
    seq = build(make_strategy(name))
    assert seq.input_ids == PROMPT + expected
    assert seq.labels == MASKED + expected  # loss on everything after the prompt, latents included


def test_text_only_strategies_need_no_codes():
    seq = build_sequence(make_strategy("cot"), EXAMPLE, None, None, seed=0, epoch=0, index=0)
    assert seq.input_ids == PROMPT + [20, 21, 22, 23, 24, 30, 2]
    with pytest.raises(ConfigError):
        build_sequence(make_strategy("token-assorted"), EXAMPLE, None, None, seed=0, epoch=0, index=0)


def test_replace_first_chunks():
    assert replace_chunks(EXAMPLE.trace_ids, CODES, prefix_mask(3, 1), LAYOUT) == [BO, Z0, EO, 22, 23, 24]
    assert replace_chunks(EXAMPLE.trace_ids, CODES, prefix_mask(3, 2), LAYOUT) == [BO, Z0, Z0 + 1, EO, 24]
    assert replace_chunks(EXAMPLE.trace_ids, CODES, prefix_mask(3, 0), LAYOUT) == EXAMPLE.trace_ids


def test_runs_of_replaced_chunks_share_one_span():
    assert replace_chunks(EXAMPLE.trace_ids, CODES, [True, False, True], LAYOUT) == \
        [BO, Z0, EO, 22, 23, BO, Z0 + 2, EO]
    assert replace_chunks(EXAMPLE.trace_ids, CODES, [False, True, True], LAYOUT) == [20, 21, BO, Z0 + 1, Z0 + 2, EO]


def test_several_latents_per_chunk():
    layout = ChunkLayout(chunk_size=4, latents_per_chunk=2, vocab=VOCAB)
    codes = [3, 2, 1, 0]  # 2 chunks x 2 codes
    assert replace_chunks([5, 6, 7, 8, 9], codes, [True, False], layout) == [BO, Z0 + 3, Z0 + 2, EO, 9]


@pytest.mark.parametrize("m, chunks", [(0, 0), (1, 0), (2, 1), (3, 1), (4, 2), (5, 3), (100, 3)])
def test_m_rounds_down_to_whole_chunks_and_beyond_trace_replaces_all(m, chunks):
    assert chunks_for_m(m, trace_length=5, chunk_size=2) == chunks


def test_token_assorted_with_fixed_m():
    seq = build(TokenAssorted(m_values=[3]))
    assert seq.input_ids == PROMPT + [BO, Z0, EO, 22, 23, 24, 30, 2]
    assert seq.labels == MASKED + [BO, Z0, EO, 22, 23, 24, 30, 2]
    assert seq.n_replaced == 1


def test_token_assorted_redraws_across_epochs_and_repeats_exactly():
    strategy = make_strategy("token-assorted")
    draws = [build(strategy, epoch=e).n_replaced for e in range(40)]
    assert set(draws) == {0, 1, 2, 3}  # uniform over whole-chunk split points
    assert draws == [build(strategy, epoch=e).n_replaced for e in range(40)]  # resume-exact
    per_example = {build(strategy, epoch=0, index=i).n_replaced for i in range(40)}
    assert len(per_example) > 1  # drawn per example, not per batch


def test_m_values_set_is_respected():
    strategy = TokenAssorted(m_values=[0, 4])
    assert {build(strategy, epoch=e).n_replaced for e in range(40)} == {0, 2}
    with pytest.raises(ConfigError):
        TokenAssorted(m_values=[])


def test_curriculum_grows_stage_by_stage_to_a_cap():
    strategy = Curriculum(epochs_per_stage=2, max_chunks=2)
    assert [build(strategy, epoch=e).n_replaced for e in range(8)] == [0, 0, 1, 1, 2, 2, 2, 2]
    assert build(strategy, epoch=3).input_ids == PROMPT + [BO, Z0, EO, 22, 23, 24, 30, 2]


def test_poisson_extremes_and_rate():
    assert build(PoissonReplace(0.0)).n_replaced == 0
    assert build(PoissonReplace(1.0)).input_ids == build(make_strategy("all-replace")).input_ids
    total = sum(build(PoissonReplace(0.5), index=i).n_replaced for i in range(400))
    assert 0.4 < total / (400 * 3) < 0.6


def test_codes_must_match_the_trace():
    check_codes(5, CODES, LAYOUT)
    with pytest.raises(CheckpointError):
        check_codes(5, [0, 1], LAYOUT)
    with pytest.raises(CheckpointError):
        check_codes(5, [0, 1, 9], LAYOUT)  # outside K=4


PAUSE_ID = 106  # <pause>, after the four codes
PAUSE_LAYOUT = ChunkLayout(2, 1, LatentVocab(4, BO, EO, Z0, pause_id=PAUSE_ID))


@pytest.mark.parametrize("m_values", [None, [0, 0, 2, 99]])
def test_pause_is_token_assorted_with_a_pause_token_in_place_of_each_code(m_values):
    assorted, pause = TokenAssorted(m_values), Pause(m_values)
    seen = set()
    for epoch in range(6):
        for index in range(6):
            ta = build(assorted, epoch=epoch, index=index)
            p = build_sequence(pause, EXAMPLE, None, PAUSE_LAYOUT, seed=0, epoch=epoch, index=index)
            assert p.n_replaced == ta.n_replaced and len(p.input_ids) == len(ta.input_ids)
            expected = [PAUSE_ID if VOCAB.id_to_code(t) is not None else t for t in ta.input_ids]
            assert p.input_ids == expected and p.labels == MASKED + expected[3:]
            seen.add(p.n_replaced)
    assert len(seen) > 1  # the same draws of m, not one fixed split
    all_latent = build_sequence(Pause([99]), EXAMPLE, None, PAUSE_LAYOUT, seed=0, epoch=0, index=0)
    assert all_latent.input_ids == PROMPT + [BO, PAUSE_ID, PAUSE_ID, PAUSE_ID, EO, 30, 2]
    with pytest.raises(ConfigError, match="pause"):  # no <pause> token in the vocabulary
        build_sequence(pause, EXAMPLE, None, LAYOUT, seed=0, epoch=0, index=0)
    assert "pause" in METHOD_NAMES and not Pause().needs_codes


def test_the_most_chunks_each_strategy_can_replace():
    encoded = [EXAMPLE, EncodedExample([1], [20, 21, 22], [2])]  # 3 and 2 chunks of L = 2
    most = {name: max_latent_chunks(make_strategy(name, m_values=[0, 2]), encoded, LAYOUT, epochs=4)
            for name in ("token-assorted", "pause", "cot", "sol-only", "all-replace", "poisson")}
    assert most == {"token-assorted": 1, "pause": 1, "cot": 0, "sol-only": 0, "all-replace": 3, "poisson": 3}
    assert max_latent_chunks(make_strategy("token-assorted"), encoded, LAYOUT, 4) == 3  # any split point
    assert max_latent_chunks(Curriculum(epochs_per_stage=2), encoded, LAYOUT, epochs=4) == 1  # stages 0, 0, 1, 1
    assert max_latent_chunks(PoissonReplace(0.0), encoded, LAYOUT, 4) == 0
    assert max_latent_chunks(make_strategy("all-replace"), encoded, None, 4) == 0  # no layout: text only


def test_unknown_strategy_is_a_config_error():
    with pytest.raises(ConfigError):
        make_strategy("random")


@settings(max_examples=60, deadline=None)
@given(trace=st.lists(st.integers(0, 50), min_size=1, max_size=30), chunk_size=st.integers(1, 6),
       per_chunk=st.integers(1, 3), data=st.data())
def test_replacement_keeps_text_of_unreplaced_chunks(trace, chunk_size, per_chunk, data):
    layout = ChunkLayout(chunk_size, per_chunk, LatentVocab(8, 200, 201, 202))
    n = layout.n_chunks(len(trace))
    mask = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    codes = data.draw(st.lists(st.integers(0, 7), min_size=n * per_chunk, max_size=n * per_chunk))
    out = replace_chunks(trace, codes, mask, layout)
    kept = [t for j in range(n) if not mask[j] for t in trace[j * chunk_size:(j + 1) * chunk_size]]
    assert [t for t in out if t < 200] == kept
    assert [t - 202 for t in out if t >= 202] == [z for j in range(n) if mask[j]
                                                  for z in codes[j * per_chunk:(j + 1) * per_chunk]]
    runs = sum(1 for j in range(n) if mask[j] and (j == 0 or not mask[j - 1]))
    assert out.count(200) == out.count(201) == runs
    example = EncodedExample([1], trace, [2])
    assert len([1] + out + [2]) <= max_sequence_length(example, layout)
