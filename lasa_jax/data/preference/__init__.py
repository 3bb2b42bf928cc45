"""Preference files -> unpaired `PreferenceRow`s (`rows`): the authors' paired JSON and unpaired JSONL (`formats`),
the WildGuard-labelled PolyRefuse completions (`polyrefuse`), record fields checked by `fields`. What KTO does with
the rows (latent labels, tokenisation, weights, batches) is in `lasa_jax.kto`."""
