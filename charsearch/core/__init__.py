"""The ML core: a character-level RNN trained, sampled, scored and saved with PyTorch alone.

data (corpus, vocabulary, splits, cache), model (CharRNN and the ensemble's mixture), train (one run),
sample (generation), artifact (the portable model file), devices (where and how much), config (the
training options), and what every layer shares: errors, files (safe writes), units (how numbers are
written). It imports only itself, torch and numpy: never Ray, Optuna or MLflow, nor any other layer of
charsearch, so `charsearch train` and `charsearch sample` run without them.
"""
