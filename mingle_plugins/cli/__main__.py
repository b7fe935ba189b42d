"""``python -m mingle_plugins.cli ...`` is ``celery mingle ...``."""

from . import main

main()
