"""Learned signals: train a model walk-forward on candle history and serve it through the
``ml_signal`` strategy (:class:`~mambo.core.strategies.ml_signal.MlSignal`) in every runtime.

Where to start reading:

- :mod:`mambo.core.features`: the features (recipes over the indicator set), computed the same way
  in training and, bar by bar, in the strategy;
- :mod:`.walkforward`: the labels (the only thing that looks ahead, and only training reads them),
  the walk-forward folds with their purge gap, and the LightGBM fit;
- :mod:`.train`: a whole training run (:func:`~mambo.ml.train.train`), what ``mambo train`` calls:
  the folds, their out-of-sample backtests against buy and hold, the final model;
- :mod:`.artifact`: the versioned model folder and its checked loading.

LightGBM rather than scikit-learn: one wheel (plus SciPy) instead of four packages, single-threaded
training that is deterministic by a flag, a text model format that loads without running code (no
pickle), and ~20 us to predict one bar.
"""
