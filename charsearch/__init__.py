"""charsearch: find, train and ship character-level RNN language models.

    import charsearch
    model = charsearch.load("model.pt")          # a model file or an ensemble file
    print(model.sample("ROMEO:", length=200, temperature=0.8))
    run = charsearch.train("input.txt", rnn_size=256, max_time=600)
    result = charsearch.sweep("input.txt", time="10m")   # or a sweep file
    result.export("best.pt")

The package imports nothing heavy until one of these is used (`charsearch.api`).
"""

__version__ = "0.1.0"
__all__ = ["load", "train", "sweep", "Model"]


def __getattr__(name: str):
    if name in __all__:
        from charsearch import api
        return getattr(api, name)
    raise AttributeError(f"module 'charsearch' has no attribute {name!r}")
