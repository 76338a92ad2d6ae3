import torch

from moca_model.toy.text import END_TOKEN, MAX_TOKENS, TEXT_DIM, TEXT_LEN, ToyTextEncoder, tokenize, word_vector


def test_encoding_is_a_fixed_word_table():
    enc = ToyTextEncoder()
    a, b = enc.encode(["A person nods, in warm light.", "a person NODS in warm light"])
    assert a.shape == (6 + 1, TEXT_DIM) and torch.equal(a, b)           # case and punctuation do not matter
    assert torch.equal(a[1], word_vector("person")) and torch.equal(a[-1], word_vector(END_TOKEN))
    # the stream is pinned: a change of seeding would silently invalidate every trained toy model
    assert torch.allclose(word_vector("nods")[:3], torch.tensor([1.2421747, 2.0278318, -0.8549381]))
    assert abs(word_vector("left").std().item() - 1.0) < 0.05
    cos = torch.nn.functional.cosine_similarity(word_vector("left"), word_vector("right"), dim=0)
    assert abs(cos.item()) < 0.1                                        # different words are near-orthogonal


def test_empty_and_long_prompts():
    enc = ToyTextEncoder()
    (empty,) = enc.encode([""])
    assert empty.shape == (1, TEXT_DIM) and torch.equal(empty[0], word_vector(END_TOKEN))
    (long,) = enc.encode(["word " * 2000])
    assert long.shape == (MAX_TOKENS, TEXT_DIM)
    padded = enc("a person smiles")
    assert padded.shape == (1, TEXT_LEN, TEXT_DIM) and torch.equal(padded[0, :4], enc.encode(["a person smiles"])[0])
    assert not padded[0, 4:].any()
    assert tokenize("Zoom-in, 2 people!") == ["zoom", "in", "2", "people"]
