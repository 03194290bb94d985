"""A workflow plugin (``plugins: [selectmoe.rehearsal.offline_plugin]``): imported at the start
of every job, it makes ``datasets.load_dataset`` answer the paper tasks' dataset ids with the
offline fixtures of :mod:`selectmoe.data.offline_tasks`, so that lm-eval's own task definitions
run without network. Every other dataset id goes to the real ``load_dataset``."""

from selectmoe.data.offline_tasks import serve_offline

_SERVING = serve_offline()
_SERVING.__enter__()  # for the life of the process: a job is one process
