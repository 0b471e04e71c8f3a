"""Multi30k: fetching and verifying the files, subword tokenizers, token-budget batching."""
