"""Run configs (``default.py``, ``paper.py``) and study configs (``studies/``), read by
``--config FILE[:ARG]``; what they share is in ``common.py``. Files are loaded by path
(``mist_jax.infra.config_files``), so they run from any folder."""
