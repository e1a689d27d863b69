"""Stage 1's parts, one at a time: each module owns exactly its weights, and each computes what
the slow reference computes (the copy head's mixture, the autoregressive decoder, greedy decoding,
the output vocabulary, the search, the copy prefix, the prompt's keys and values projected once).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from vqvae_toys import (
    SEARCH,
    code_log_likelihoods,
    decoder_states,
    greedy_errors,
    log_probs,
    output_vocab_model,
    predict,
    random_batch,
    reference_greedy,
    spread_search_model,
    target_log_probs,
    tiny_model,
)

from token_assorted.vqvae.codes import codebook_of
from token_assorted.vqvae import VQVAE, TextVocab
from token_assorted.vqvae.copy_head import CopyHead
from token_assorted.vqvae.decoder import ChunkDecoder
from token_assorted.vqvae.decoding import greedy_tokens
from token_assorted.vqvae.encoder import ChunkEncoder
from token_assorted.vqvae.prompt import PromptMemory
from token_assorted.vqvae.quantizer import build_quantizer
from token_assorted.vqvae.search import token_log_likelihoods
from token_assorted.vqvae.tokens import TokenEmbedding


# --- each part owns its weights ---------------------------------------------------------------
PARTS = {"tokens", "prompt_memory", "encoder", "quantizer", "decoder", "copy_head"}
RECIPES = [dict(), dict(SEARCH, autoregressive=True, local_context=2, copy_prefix=True, output_size=12)]


@pytest.mark.parametrize("recipe", RECIPES, ids=["nearest", "search-ar-prefix"])
def test_the_vqvae_is_the_union_of_its_parts_none_shared(recipe):
    model = tiny_model(**recipe)
    assert set(dict(model.named_children())) == PARTS
    assert not list(model.named_parameters(recurse=False)) and not list(model.named_buffers(recurse=False))
    # Every tensor belongs to exactly one part: the parts' lists, joined, are the model's list.
    each = [id(t) for part in model.children() for t in (*part.parameters(), *part.buffers())]
    assert len(each) == len(set(each))
    assert set(each) == {id(t) for t in (*model.parameters(), *model.buffers())}
    assert all(key.split(".")[0] in PARTS for key in model.state_dict())


@pytest.mark.parametrize("recipe", RECIPES, ids=["nearest", "search-ar-prefix"])
def test_each_part_built_on_its_own_has_the_weights_it_has_in_the_model(recipe):
    model = tiny_model(**recipe)
    config, vocab = model.config, model.vocab
    alone = {"tokens": TokenEmbedding(vocab, config.d_model, config.local_context),
             "prompt_memory": PromptMemory(config), "encoder": ChunkEncoder(config),
             "quantizer": build_quantizer(config), "decoder": ChunkDecoder(config),
             "copy_head": CopyHead(config.d_model, config.copy_prefix)}
    for name, part in alone.items():
        inside = getattr(model, name).state_dict()
        assert {k: v.shape for k, v in part.state_dict().items()} == {k: v.shape for k, v in inside.items()}, name
    # Options add their weights to the part they belong to, and to no other.
    plain = tiny_model()
    grown = {name for name in PARTS if set(getattr(model, name).state_dict()) != set(getattr(plain, name).state_dict())}
    assert grown == (set() if not recipe else {"tokens", "quantizer", "copy_head"})


def test_stage_2_gets_the_codebook_the_codes_are_assigned_with():
    # Stage 2's `codebook` init reads the quantizer's codebook (latents.codebook_of): after EMA updates
    # it must be the table the nearest code is found in, and the decoder reads its projection.
    model = tiny_model(compression=4).train()  # one latent per chunk, codebook_dim 8 < d_model 32
    prompt, pad, chunk_ids, present = batch = random_batch(batch=8, chunks=3)  # 23 chunks for 8 codes
    model(*batch)  # k-means initialisation
    initial = codebook_of(model, 8).clone()
    for _ in range(3):  # other chunks: other latents for the EMA to move towards
        model(prompt, pad, torch.randint(4, 40, chunk_ids.shape), present)
    codebook = codebook_of(model, 8)  # (K, 8)
    assert codebook.shape == (8, 8) and not torch.allclose(initial, codebook)  # the EMA moved it
    model.eval()
    with torch.no_grad():
        latents = model.encode(chunk_ids, model.encode_prompt(prompt, pad), pad)[present]  # (C, 1, D)
        quantized, codes, _ = model.quantizer(latents)
        projected = model.quantizer.vq.project_in(latents).flatten(0, 1)  # (C, 8)
    distances = torch.cdist(projected, codebook)  # (C, K)
    assert torch.allclose(distances.gather(1, codes), distances.min(-1, keepdim=True).values)  # nearest (or tied)
    assert torch.allclose(quantized, model.quantizer.vectors(codes), atol=1e-6)


# --- the model's passes ---------------------------------------------------------------------
@pytest.mark.parametrize("autoregressive", [False, True])
def test_forward_shapes(autoregressive):
    model = tiny_model(autoregressive=autoregressive)
    prompt, pad, chunk_ids, present = random_batch()
    output = model(prompt, pad, chunk_ids, present)
    n_real = int(present.sum())
    assert output.predictions.shape == (n_real, 4)
    assert output.codes.shape == (n_real, 2)  # L/r = 2 latents per chunk
    assert output.loss.ndim == 0 and torch.isfinite(output.loss)
    model.eval()
    assert model.codes_of(prompt, pad, chunk_ids, present).shape == (n_real, 2)
    assert model.tokens_of(prompt, pad, output.codes, present).shape == (n_real, 4)


def test_copy_head_gives_a_distribution_summing_to_one():
    model = tiny_model()
    batch = random_batch()
    hidden, memory = decoder_states(model, *batch)
    probabilities = log_probs(model, hidden, memory, batch[1], batch[0]).exp()  # (B, N, L, V)
    assert torch.allclose(probabilities.sum(-1), torch.ones(probabilities.shape[:3]), atol=1e-5)
    output = model(*batch)
    output.loss.backward()  # ids absent from the prompt have log 0 = -inf; their gradient must not be NaN
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)
    assert model.copy_head.gate.weight.grad.abs().sum() > 0 and model.copy_head.key.weight.grad.abs().sum() > 0


def test_copy_head_puts_the_copied_mass_on_the_prompt_tokens():
    model = tiny_model().eval()
    prompt = torch.tensor([[7, 7, 9, 11, 3]])  # 7 twice; the last position (3) is padding
    pad = torch.tensor([[False, False, False, False, True]])
    memory = model.encode_prompt(prompt, pad)
    hidden = torch.randn(1, 2, 4, 32)  # (B, N, L, D) any decoder states
    with torch.no_grad():
        model.copy_head.gate.weight.zero_()
        model.copy_head.gate.bias.fill_(-60.0)  # p_gen ~ 0: copy only
        copied = log_probs(model, hidden, memory, pad, prompt).exp()  # (1, 2, 4, V)
        model.copy_head.gate.bias.fill_(60.0)  # p_gen ~ 1: vocabulary head only
        generated = log_probs(model, hidden, memory, pad, prompt)
    assert torch.allclose(copied[..., [7, 9, 11]].sum(-1), torch.ones(1, 2, 4), atol=1e-5)
    assert copied[..., 3].max() < 1e-6 and copied[..., 20].max() < 1e-6  # padding and absent ids get nothing
    assert copied[..., 7].min() > 0  # both positions of id 7 add to its mass
    assert torch.allclose(generated, torch.log_softmax(model.tokens.logits(hidden), -1), atol=1e-4)


def test_gradients_reach_encoder_through_straight_through():
    model = tiny_model()
    model(*random_batch())  # first pass initialises the codebook by k-means
    output = model(*random_batch())
    output.recon_loss.backward()  # reconstruction only: the encoder gets it through q only via the STE
    for name, parameter in model.encoder.named_parameters():
        if "linear2.weight" in name:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert model.encoder.latent_queries.grad.abs().sum() > 0


def test_autoregressive_decoder_is_causal_within_a_chunk():
    model = tiny_model(autoregressive=True).eval()
    prompt, pad, chunk_ids, _ = random_batch()
    memory = model.encode_prompt(prompt, pad)
    quantized = torch.randn(3, 2, 2, 32)
    changed = chunk_ids.clone()
    changed[:, :, 2] = 5  # a different token at position 2
    before, after = model.decode(quantized, memory, pad, chunk_ids), model.decode(quantized, memory, pad, changed)
    assert torch.allclose(before[:, :, :3], after[:, :, :3], atol=1e-6)  # positions 0..2 never see token 2
    assert not torch.allclose(before[:, :, 3], after[:, :, 3])  # position 3 does


@pytest.mark.parametrize("copy_prefix,compression", [(False, 2), (True, 4)])
def test_step_by_step_greedy_decoding_equals_one_decoder_pass_per_position(copy_prefix, compression):
    model = tiny_model(autoregressive=True, local_context=2, copy_prefix=copy_prefix, compression=compression,
                       decoder_layers=2).eval()
    prompt, pad, _, _ = random_batch()  # example 0's prompt is padded
    latents = model.config.latents_per_chunk
    with torch.no_grad():
        memory = model.encode_prompt(prompt, pad)
        quantized = torch.randn(3, 2, latents, 32)
        index = torch.arange(2).expand(3, 2)
        greedy = greedy_tokens(model, quantized, index, memory, pad, prompt)  # (B, N, L)
        assert torch.equal(greedy, reference_greedy(model, quantized, memory, pad, prompt))
        assert len(greedy.unique()) > 3  # the codes make it write different tokens
        # Teacher-forced on its own output, the decoder agrees with every token it wrote.
        hidden = model.decode(quantized, memory, pad, greedy)
        assert torch.equal(predict(model, hidden, memory, pad, prompt, model.prefix_of(greedy)), greedy)


def test_local_context_lets_a_prompt_position_read_the_tokens_before_it():
    prompt, pad, _, _ = random_batch()
    changed = prompt.clone()
    changed[:, 1] = 3  # a different token at position 1
    for k, reads_it in ((0, False), (2, True)):
        model = tiny_model(prompt_layers=0, local_context=k).eval()  # no attention: position i sees its input only
        before, after = model.encode_prompt(prompt, pad), model.encode_prompt(changed, pad)
        assert torch.allclose(before[:, 0], after[:, 0])  # nothing reads ahead
        assert torch.allclose(before[:, 4:], after[:, 4:])  # beyond k = 2 tokens back
        assert torch.allclose(before[:, 3], after[:, 3]) != reads_it  # two tokens back: read only with k = 2


def test_autoregressive_decoder_with_local_context_is_still_causal():
    model = tiny_model(autoregressive=True, local_context=2).eval()
    prompt, pad, chunk_ids, _ = random_batch()
    memory = model.encode_prompt(prompt, pad)
    quantized = torch.randn(3, 2, 2, 32)
    changed = chunk_ids.clone()
    changed[:, :, 1] = 5
    before, after = model.decode(quantized, memory, pad, chunk_ids), model.decode(quantized, memory, pad, changed)
    assert torch.allclose(before[:, :, :2], after[:, :, :2], atol=1e-6)
    assert not torch.allclose(before[:, :, 2], after[:, :, 2])
    longer = tiny_model(autoregressive=True, local_context=6).eval()  # k beyond the chunk and the prompt
    assert longer.decode(quantized, longer.encode_prompt(prompt, pad), pad, chunk_ids).shape == (3, 2, 4, 32)


@pytest.mark.parametrize("restricted", [True, False])
def test_loss_and_predictions_agree_with_the_whole_distribution(restricted):
    model, batch = output_vocab_model() if restricted else (tiny_model(), random_batch())
    prompt, pad, chunk_ids, present = batch
    hidden, memory = decoder_states(model, *batch)
    with torch.no_grad():
        whole = log_probs(model, hidden, memory, pad, prompt)  # (B, N, L, V)
        targets = chunk_ids[present]
        picked = target_log_probs(model, hidden, memory, pad, prompt, targets, present)
        assert torch.allclose(picked, whole[present].gather(-1, targets[..., None])[..., 0], atol=1e-5)
        assert torch.equal(predict(model, hidden, memory, pad, prompt), whole.argmax(-1))
        # Copying only: the best token is a prompt token, even one outside the output vocabulary.
        model.copy_head.gate.bias.fill_(-60.0)
        whole = log_probs(model, hidden, memory, pad, prompt)
        predicted = predict(model, hidden, memory, pad, prompt)
        assert torch.equal(predicted, whole.argmax(-1))
        if restricted:
            assert (model.tokens.slots_of(predicted) < 0).any()


def test_an_output_vocabulary_of_every_id_changes_nothing():
    batch = random_batch()
    a = tiny_model()(*batch)  # the seed is set before each model is built, so k-means init matches too
    everything = tiny_model(output_size=40)
    everything.set_output_vocab(range(40))
    b = everything(*batch)
    assert torch.allclose(a.recon_loss, b.recon_loss) and torch.equal(a.predictions, b.predictions)


def test_a_target_the_decoder_cannot_write_gets_a_finite_capped_loss():
    model, (prompt, pad, chunk_ids, present) = output_vocab_model()
    absent = min(set(range(40)) - set(model.tokens.output_ids.tolist()) - set(prompt.flatten().tolist()))
    chunk_ids = chunk_ids.clone()
    chunk_ids[0, 0, 0] = absent  # an id neither the head nor the copy head can write
    assert model.tokens.slots_of(chunk_ids[0, 0, :1]).item() == -1
    hidden, memory = decoder_states(model, prompt, pad, chunk_ids, present)
    picked = target_log_probs(model, hidden, memory, pad, prompt, chunk_ids[present], present)
    assert picked[0, 0].item() == -30.0 and (picked[0, 1:] > -30).all()  # capped at the floor
    output = model(prompt, pad, chunk_ids, present)
    assert torch.isfinite(output.recon_loss)
    output.recon_loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_output_vocabulary_of_the_wrong_size_is_refused():
    model = tiny_model(output_size=5)
    with pytest.raises(ValueError, match="output_size=5"):
        model.set_output_vocab([1, 2, 3])
    with pytest.raises(ValueError, match="output vocabulary of 11 ids"):
        TextVocab(10, 0, 11)


@pytest.mark.parametrize("autoregressive,copy_prefix", [(False, False), (True, False), (True, True)])
def test_search_gives_each_chunk_the_code_its_decoding_fits_best(autoregressive, copy_prefix):
    model = spread_search_model(autoregressive=autoregressive, local_context=1, copy_prefix=copy_prefix)
    prompt, pad, chunk_ids, present = batch = random_batch()
    likelihoods = code_log_likelihoods(model, *batch)  # (K, C)
    codes = model.codes_of(*batch)[:, 0]
    assert torch.equal(codes, likelihoods.argmax(0))
    assert len(set(codes.tolist())) > 1
    assert torch.equal(model(*batch).codes[:, 0], codes)
    # The batched scoring of all K codes gives what one code at a time gives.
    with torch.no_grad():
        memory = model.encode_prompt(prompt, pad)
        owner, index = present.nonzero().unbind(1)
        side = model.copy_head.chunk_side(model.tokens, memory[owner], pad[owner], prompt[owner], chunk_ids[present])
        batched = token_log_likelihoods(model, chunk_ids[present], index, model.memory_kv(memory, pad).select(owner),
                                        side).sum(-1)  # (C, K)
    assert torch.allclose(batched.T, likelihoods, atol=1e-4)


@pytest.mark.parametrize("encode_candidates", [0, 6])  # all K codes; the encoder's 6 likeliest, in two rounds
def test_batched_search_gives_the_codes_of_one_example_at_a_time(encode_candidates):
    # Encoding scores many examples' chunks at once; the other examples (their prompt lengths,
    # their number of chunks, the batch padding) must change no chunk's code.
    model = spread_search_model(autoregressive=True, local_context=1, copy_prefix=True, search_rerank=3,
                                encode_candidates=encode_candidates)
    generator = torch.Generator().manual_seed(2)
    examples = [(torch.randint(4, 40, (length,), generator=generator),
                 torch.randint(4, 40, (n_chunks, 4), generator=generator))
                for length, n_chunks in ((6, 1), (9, 3), (4, 2), (7, 1))]
    alone = torch.cat([model.codes_of(prompt[None], torch.zeros(1, len(prompt), dtype=torch.bool), chunks[None],
                                      torch.ones(1, len(chunks), dtype=torch.bool)) for prompt, chunks in examples])
    prompt_ids, prompt_pad = torch.zeros(4, 9, dtype=torch.long), torch.ones(4, 9, dtype=torch.bool)
    chunk_ids, present = torch.zeros(4, 3, 4, dtype=torch.long), torch.zeros(4, 3, dtype=torch.bool)
    for row, (prompt, chunks) in enumerate(examples):
        prompt_ids[row, :len(prompt)], prompt_pad[row, :len(prompt)] = prompt, False
        chunk_ids[row, :len(chunks)], present[row, :len(chunks)] = chunks, True
    together = model.codes_of(prompt_ids, prompt_pad, chunk_ids, present)
    assert torch.equal(together, alone)
    assert len(set(together.flatten().tolist())) > 2


def test_search_in_training_picks_among_the_candidates_and_trains_encoder_and_codebook():
    model = tiny_model(**SEARCH).train()
    batch = random_batch()
    likelihoods = code_log_likelihoods(model.eval(), *batch)
    model.train()
    torch.manual_seed(3)
    output = model(*batch)
    chosen = output.codes[:, 0]
    # Each chosen code is at least as likely as the encoder's own favourite, which is always tried.
    memory = model.encode_prompt(batch[0], batch[1])
    with torch.no_grad():
        favourite = model.quantizer.classifier(model.encode(batch[2], memory, batch[1])[:, :, 0])[batch[3]].argmax(-1)
    columns = torch.arange(len(chosen))
    assert (likelihoods[chosen, columns] >= likelihoods[favourite, columns] - 1e-5).all()
    output.loss.backward()
    assert model.quantizer.codebook.grad[chosen].abs().sum() > 0  # the decoder's gradient reaches the codes read
    assert model.quantizer.classifier.weight.grad.abs().sum() > 0  # the encoder learns to predict them
    assert model.encoder.transformer.layers[0].linear1.weight.grad.abs().sum() > 0


def test_search_reseeds_a_code_no_chunk_chooses():
    model = tiny_model(**SEARCH).train()
    codebook = model.quantizer
    before = codebook.codebook.detach().clone()
    with torch.no_grad():
        codebook.usage.fill_(1.0)
        codebook.usage[5] = 0.01  # code 5 has not been chosen for a long time
    assert codebook.record(torch.tensor([1, 1, 2])) == 1
    changed = (codebook.codebook.detach() != before).any(-1)
    assert changed.tolist() == [i == 5 for i in range(8)]
    assert codebook.usage[5] == 1.0


def test_prefix_features_read_only_the_tokens_before_each_position():
    model = tiny_model(autoregressive=True, local_context=2, copy_prefix=True)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    changed = ids.clone()
    changed[0, 2] = 30
    before, after = model.tokens.prefix_features(ids), model.tokens.prefix_features(changed)
    assert torch.equal(before[0, :3], after[0, :3])  # positions 0..2 do not read token 2
    assert not torch.allclose(before[0, 3], after[0, 3]) and not torch.allclose(before[0, 4], after[0, 4])
    assert torch.equal(before[0, 0], torch.zeros(32))  # nothing precedes position 0
    # What the autoregressive decoder reads at position i, without its learned position query.
    assert torch.allclose(before[0, 1], model.tokens.table.weight[5])


def test_copy_prefix_copies_the_word_whose_predecessors_match_the_chunks():
    model = tiny_model(autoregressive=True, local_context=1, copy_prefix=True, compression=4).eval()
    prompt = torch.tensor([[5, 6, 7, 8, 9, 10]])
    pad = torch.zeros_like(prompt, dtype=torch.bool)
    chunk_ids = torch.tensor([[[6, 7, 12, 13]]])  # at position 2 the chunk has just written "6 7"
    with torch.no_grad():
        head = model.copy_head
        model.tokens.table.weight.normal_()  # distinct words
        head.query.weight.zero_(), head.key.weight.zero_()  # only the prefix pair decides
        head.prefix_query.weight.copy_(torch.eye(32) * 8), head.prefix_key.weight.copy_(torch.eye(32))
        head.gate.weight.zero_(), head.gate.bias.fill_(-60.0)  # copy only
        memory = model.encode_prompt(prompt, pad)
        hidden = model.decode(torch.randn(1, 1, 1, 32), memory, pad, chunk_ids)
        prefix = model.tokens.prefix_features(chunk_ids)
        copied = log_probs(model, hidden, memory, pad, prompt, prefix=prefix).exp()  # (1, 1, 4, V)
        assert copied[0, 0, 2, 8] > 0.9  # in the prompt, "6 7" precede 8
        present = torch.ones(1, 1, dtype=torch.bool)
        whole = log_probs(model, hidden, memory, pad, prompt, prefix=prefix)
        picked = target_log_probs(model, hidden, memory, pad, prompt, chunk_ids[present], present, prefix)
        assert torch.allclose(picked, whole[present].gather(-1, chunk_ids[present][..., None])[..., 0].clamp(min=-30))
        assert torch.equal(predict(model, hidden, memory, pad, prompt, prefix), whole.argmax(-1))
        with pytest.raises(ValueError, match="copy_prefix"):
            log_probs(model, hidden, memory, pad, prompt)  # the decoder side is required


def test_copy_keys_computed_once_give_the_same_distribution_as_per_call():
    model = tiny_model(autoregressive=True, local_context=2, copy_prefix=True, compression=4).eval()
    prompt, pad, chunk_ids, present = random_batch()
    with torch.no_grad():
        memory = model.encode_prompt(prompt, pad)
        hidden = model.decode(torch.randn(3, 2, 1, 32), memory, pad, chunk_ids)
        prefix = model.prefix_of(chunk_ids)
        keys = model.copy_keys(memory, prompt)
        assert keys.shape == (*prompt.shape, 64)  # copy keys and copy-prefix keys side by side
        assert torch.equal(log_probs(model, hidden, memory, pad, prompt, present, prefix, keys),
                           log_probs(model, hidden, memory, pad, prompt, present, prefix))
        # One product over the concatenation is the sum of the two query/key pairs' scores.
        head = model.copy_head
        attention, _ = head.attend(model.tokens, hidden, memory, pad, prompt, prefix, keys)
        scores = (torch.einsum("bnsd,bpd->bnsp", head.query(hidden), head.key(memory))
                  + torch.einsum("bnsd,bpd->bnsp", head.prefix_query(head.prefix_norm(prefix)),
                                 head.prefix_key(head.prefix_norm(model.tokens.prefix_features(prompt))))) / 32 ** 0.5
        expected = scores.masked_fill(pad[:, None, None], float("-inf")).softmax(-1)
        assert torch.allclose(attention, expected, atol=1e-6)


@pytest.mark.parametrize("autoregressive", [False, True])
def test_memory_projected_once_decodes_as_the_stack_does(autoregressive):
    # The search and greedy decoding read the prompt's keys and values projected once
    # (prompt.MemoryKV); the decoder's output must be the library stack's, with the batch
    # repeated (the training search's candidates stacked) or with rows selected.
    model = tiny_model(autoregressive=autoregressive, local_context=1, decoder_layers=2).eval()
    prompt, pad, chunk_ids, _ = random_batch()  # example 0's prompt is padded
    quantized = torch.randn(3, 2, 2, 32)
    with torch.no_grad():
        memory = model.encode_prompt(prompt, pad)
        expected = model.decode(quantized, memory, pad, chunk_ids)
        memory_kv = model.memory_kv(memory, pad)
        assert torch.allclose(model.decode(quantized, memory, pad, chunk_ids, memory_kv), expected, atol=1e-6)
        repeated = model.decode(*(t.repeat(3, *[1] * (t.dim() - 1)) for t in (quantized, memory, pad, chunk_ids)),
                                memory_kv.repeat(3))
        assert torch.allclose(repeated, expected.repeat(3, 1, 1, 1), atol=1e-6)
        rows = torch.tensor([2, 0])
        selected = model.decode(quantized[rows], memory[rows], pad[rows], chunk_ids[rows], memory_kv.select(rows))
        assert torch.allclose(selected, expected[rows], atol=1e-6)
        shorter = pad.clone()
        shorter[1, 3:] = True  # example 1's last prompt tokens hidden: its chunks must change
        other = model.decode(quantized, memory, pad, chunk_ids, model.memory_kv(memory, shorter))
        assert torch.equal(other[0], expected[0]) and not torch.allclose(other[1], expected[1], atol=1e-3)


@pytest.mark.parametrize("autoregressive", [False, True])
def test_search_rerank_picks_among_the_likeliest_codes_the_one_decoded_best(autoregressive):
    model = spread_search_model(autoregressive=autoregressive)
    batch = random_batch()
    with torch.no_grad():
        likelihoods = code_log_likelihoods(model, *batch)  # (K, C)
        errors = greedy_errors(model, *batch)  # (K, C)
        plain = model.codes_of(*batch)[:, 0]
        columns = torch.arange(len(plain))
        for n in (3, 8):  # 8 = K: every code is decoded
            rerank = VQVAE(dataclasses.replace(model.config, search_rerank=n), model.vocab)
            rerank.load_state_dict(model.state_dict())
            codes = rerank.eval().codes_of(*batch)[:, 0]
            likeliest = likelihoods.topk(n, dim=0).indices  # (n, C)
            assert ((likeliest == codes).any(0)).all()  # one of the n most likely codes
            fewest = errors.gather(0, likeliest).min(0).values
            assert torch.equal(errors[codes, columns], fewest)  # ... and among them, decoded best
            assert (errors[codes, columns] <= errors[plain, columns]).all()
        assert torch.equal(errors[codes, columns], errors.min(0).values)


def test_search_rerank_leaves_training_to_the_likelihood(monkeypatch):
    import token_assorted.vqvae.search as search

    model = tiny_model(**SEARCH, autoregressive=True, search_rerank=4)
    monkeypatch.setattr(search, "greedy_tokens", lambda *args: pytest.fail("decoded in training"))
    model.train()(*random_batch()).loss.backward()  # the candidates are ranked by likelihood alone
    with pytest.raises(pytest.fail.Exception):
        model.eval().codes_of(*random_batch())


