"""``python -m bulklink`` is the same as the ``bulklink`` command."""

from bulklink.cli import main

main()
