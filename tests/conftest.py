import pytest
from harmon_helpers import tiny_tokenizer
from showo_helpers import save_word_tokenizer
from train_helpers import fit_small_tokenizer


@pytest.fixture(scope="session")
def small_tokenizer(tmp_path_factory):
    """A 64-code patch tokenizer for 32 px ShapesWorld images, fitted once per test session."""
    return fit_small_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.safetensors")


@pytest.fixture(scope="session")
def showo_tokenizer(tmp_path_factory):
    """A word-level Phi-style tokenizer folder for the tiny Show-o configs."""
    return save_word_tokenizer(tmp_path_factory.mktemp("phi-words"))


@pytest.fixture(scope="session")
def harmon_tokenizer(tmp_path_factory):
    """A word-level Qwen-style tokenizer folder for the tiny Harmon configs."""
    return tiny_tokenizer(tmp_path_factory.mktemp("harmon-words"))
