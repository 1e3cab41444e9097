"""Data pipeline: tokenizer (rustbpe- or tokenizers-trained, tiktoken-run), content-keyed token caches, loaders.

    bundle = prepare_data("builtin", vocab_size=2048)        # or "text:PATH", "parquet:GLOB"
    loader = TokenLoader(bundle.train, seq_len, global_batch, rank, world_size, seed, device)
    x, y = loader.next()
    bundle.manifest["tokenizer_trainer"]                     # "rustbpe" or "tokenizers": which trained it
    tokenizer_trainer()                                      # which would train a new one here
    for x, y in val_batches(bundle.val, seq_len, batch_size, max_tokens, rank, world_size): ...
"""
from .loader import TokenLoader, val_batches
from .prepare import DataBundle, default_cache_dir, prepare_data, token_dtype
from .sources import resolve_source
from .tokenizer import (SPECIAL_TOKENS, SPLIT_PATTERN, TRAINERS, Tokenizer, tokenizer_trainer,
                        train_tokenizer, trainer_installed)

__all__ = ["Tokenizer", "train_tokenizer", "DataBundle", "prepare_data", "TokenLoader",
           "val_batches", "default_cache_dir", "token_dtype", "resolve_source",
           "SPECIAL_TOKENS", "SPLIT_PATTERN", "TRAINERS", "tokenizer_trainer", "trainer_installed"]
