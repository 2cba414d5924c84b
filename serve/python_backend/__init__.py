"""Triton Python-backend models that ``psvit-export triton`` copies into a repository as ``model.py``.

They run inside Triton's Python backend, never in this package: they import only numpy, Pillow and the
``psvit_vendored`` copy of psvit's preprocessing and top-k code written next to them (the same source, so
Triton needs neither torch nor psvit-deploy installed).
"""
