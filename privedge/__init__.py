"""privedge: private feature extraction at the home gateway, analysis in the cloud.

The console script lives in :mod:`privedge.cli`; the work is done by the packages ``schemas``,
``models``, ``sensors``, ``gateway``, ``workers`` and ``bench``.
"""
