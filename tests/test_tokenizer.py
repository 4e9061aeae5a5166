import hashlib
from importlib import resources

import pytest

from audioclip.model import tokenize
from audioclip.model.tokenizer import BPE_FILE, BPE_SHA256, END_TOKEN, START_TOKEN, token_ids


def test_vocabulary_ships_with_the_package_and_has_the_published_hash():
    data = resources.files("audioclip.model").joinpath(BPE_FILE).read_bytes()
    assert len(data) == 1_356_917
    expected = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
    assert hashlib.sha256(data).hexdigest() == BPE_SHA256 == expected


def test_shape_dtype_and_framing():
    tokens = tokenize(["dog", "dog bark"])
    assert tokens.shape == (2, 77) and str(tokens.dtype) == "torch.int64"
    assert tokens[0, :3].tolist() == [START_TOKEN, 1929, END_TOKEN]
    assert tokens[1, :4].tolist() == [START_TOKEN, 1929, 16560, END_TOKEN]
    assert tokens[0, 3:].sum() == 0
    ids = token_ids(["dog", "dog bark"])  # the numpy form text_encoder.onnx takes, without torch
    assert ids.dtype.name == "int64" and ids.tolist() == tokens.tolist()


def test_cleaning_is_case_whitespace_and_html_insensitive():
    assert tokenize(["  Dog\t  BARK "]).tolist() == tokenize(["dog bark"]).tolist()
    assert tokenize(["fish &amp; chips"]).tolist() == tokenize(["fish & chips"]).tolist()


def test_too_long_text_raises_naming_it_unless_truncated():
    text = "siren " * 100
    with pytest.raises(ValueError, match="longer than the context of 77.*siren"):
        tokenize([text])
    tokens = tokenize([text], truncate=True)[0]
    assert tokens[0] == START_TOKEN and tokens[-1] == END_TOKEN and (tokens != 0).all()


def test_non_string_raises():
    with pytest.raises(ValueError, match="strings"):
        tokenize(["dog", 3])
