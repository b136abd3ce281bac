"""The spreadsheets: reading inputs and reports, the ID rules, writing the report.

Imports only the leaves and ``_fs``.
"""
