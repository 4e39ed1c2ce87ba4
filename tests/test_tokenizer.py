import pytest
from transformers import AutoTokenizer, CLIPTokenizer, CLIPTokenizerFast

from editflow.models.tokenizer import build_vocab, save_tokenizer


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, world):
    d = tmp_path_factory.mktemp("tok")
    save_tokenizer(world.vocabulary(), d, model_max_length=24)
    return d


def test_every_world_word_is_one_token(tok_dir, world):
    tok = CLIPTokenizer.from_pretrained(tok_dir)
    for w in world.vocabulary():
        assert len(tok(w, add_special_tokens=False).input_ids) == 1, w


def test_round_trip_through_all_loaders(tok_dir):
    text = "a picture of an emerald pentagram by kaz"
    ids = None
    for cls in (CLIPTokenizer, CLIPTokenizerFast, AutoTokenizer):
        tok = cls.from_pretrained(tok_dir)
        enc = tok(text, padding="max_length", max_length=tok.model_max_length)
        assert len(enc.input_ids) == 24
        assert tok.decode(enc.input_ids, skip_special_tokens=True) == text
        ids = ids or enc.input_ids
        assert enc.input_ids == ids


def test_unknown_words_fall_back_to_characters(tok_dir):
    tok = CLIPTokenizer.from_pretrained(tok_dir)
    ids = tok("qwzx", add_special_tokens=False).input_ids
    assert len(ids) == 4
    assert tok.eos_token_id not in ids  # <|endoftext|> doubles as unk in CLIP
    assert tok.decode(ids) == "qwzx"


def test_merges_do_not_split_earlier_words():
    vocab, merges = build_vocab(["star", "tar", "stars", "tarot", "start"])
    tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], model_max_length=8)
    for w in ["star", "tar", "stars", "tarot", "start"]:
        assert len(tok(w, add_special_tokens=False).input_ids) == 1, w
