"""Data: the example schema, readers of every source, the tasks (generate, load, render, verify), the text
tokenizer and the latent-token vocabulary, and the encoding of an example into prompt, trace and solution ids."""
