"""What survives a crash: the scope, the journal, the state store, the ledger and the locks.

Imports only the leaves and ``_fs``.
"""
