from transformers import CLIPTokenizer

from models.reference.tokenizer import MODEL_MAX_LENGTH, world_words, write_tokenizer


def test_every_world_word_is_one_token_and_round_trips(tmp_path):
    tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer(tmp_path))
    for word in world_words():
        ids = tokenizer(word, add_special_tokens=False).input_ids
        assert len(ids) == 1, word
        assert tokenizer.decode(ids).strip() == word
    assert tokenizer.model_max_length == MODEL_MAX_LENGTH


def test_any_text_still_tokenizes_and_placeholders_can_be_added(tmp_path):
    tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer(tmp_path))
    ids = tokenizer("Zebra-stripes 42!", add_special_tokens=False).input_ids
    assert tokenizer.decode(ids).replace(" ", "") == "zebra-stripes42!"
    before = len(tokenizer)
    tokenizer.add_tokens(["<leap>"])
    ids = tokenizer("a photo of a <leap>", add_special_tokens=False).input_ids
    assert ids[-1] == before and len(ids) == 5


def test_builder_is_deterministic(tmp_path):
    write_tokenizer(tmp_path / "a")
    write_tokenizer(tmp_path / "b")
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
