"""The DreamBench-v2-style human rating page (`suti rate`).

* :mod:`.ratings`: an evaluation's records, the ratings database (sqlite, one row per
  (rater, record)) and the aggregation pushed to MLflow. No web code.
* :mod:`.app`: the Flask app, and :class:`~.app.RatingServer` to run it in-process.

Imported as ``suti.ui`` (``flows/rate.py`` loads this folder by path under that name
when the installed package does not list it yet).
"""
