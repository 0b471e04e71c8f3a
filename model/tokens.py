"""The special token ids every vocabulary and the model agree on (tokenizers assign them first)."""

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
