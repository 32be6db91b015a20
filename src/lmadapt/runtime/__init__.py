"""The ground floor: infrastructure every layer above ``config/`` uses, and nothing of lmadapt's own above it.

- ``dist.py``: coordination between the processes of one torchrun / accelerate job (main process decides,
  broadcasts; no-ops with one process);
- ``outputs.py``: the one atomic writer (temp sibling, then rename) and the output folder's files (recipe,
  meta, metrics);
- ``run_folder.py``: a training folder's lock, run fingerprint, overwrite;
- ``folders.py``: writing a whole output folder (temp sibling + rename, a manifest of what lmadapt wrote).

It lives below ``models/``, ``data/`` and ``metrics.py`` so that they, too, write files one way.
"""
