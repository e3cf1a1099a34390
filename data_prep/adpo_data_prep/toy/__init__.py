"""The offline quickstart's own pieces: a byte-level BPE tokenizer and a tiny Llama, built here in seconds."""
