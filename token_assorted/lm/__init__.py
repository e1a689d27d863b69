"""Stage 2: the language model. Loading it (from scratch, a local folder, GGUF), extending its vocabulary,
the mixed sequences of every strategy, the methods (Token Assorted and its ablations, Coconut, iCoT), training,
and the saved model folder."""
