"""Stage 1 (Locate): the semantic bottleneck, the residual index where prompts cluster by meaning, not language.

Modules: `stage` (the contract and the run), `settings` (the config reader), `corpus` (the parallel texts analysed),
`silhouette` (jitted cosine/euclidean silhouettes), `selection` (argmax of S_sem - S_lang with a group bootstrap),
`probe` (harmful-vs-benign probe AUROC per residual index), `report` (bottleneck.json, layers.csv, plots, loading).
Other stages read k* through `report.load_bottleneck`, Locate's artifact module.
"""
