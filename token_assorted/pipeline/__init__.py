"""The main job, `token-assorted run`: a preset (presets/*.yaml) checked in full, then the stages data ->
tokenizer -> VQ-VAE -> codes -> train -> eval -> probes, each cached in its own folder, then the report."""
