"""BPE text tokenizers: a pretrained Qwen2/CosyVoice directory, or a BPE trained on the corpus."""

from .bpe import train_bpe
from .tokenizer import BPETextTokenizer, HFTextTokenizer, TextTokenizer, TextTokenizerError, load_text_tokenizer

__all__ = [
    "TextTokenizer",
    "HFTextTokenizer",
    "BPETextTokenizer",
    "TextTokenizerError",
    "load_text_tokenizer",
    "train_bpe",
]
