"""napari integration: the protocol explorer widget, its Qt-free controller, sample data, reader/writer.

Importing this package imports no Qt; only :mod:`.explorer` (the dock widget) does.
"""
