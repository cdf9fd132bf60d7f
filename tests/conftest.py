import pytest
from train_helpers import fit_small_tokenizer


@pytest.fixture(scope="session")
def small_tokenizer(tmp_path_factory):
    """A 64-code patch tokenizer for 32 px ShapesWorld images, fitted once per test session."""
    return fit_small_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.safetensors")
