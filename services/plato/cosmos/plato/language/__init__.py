"""Plato's workflow language: the YAML definitions, compiled into :mod:`.model` objects.

``parse(source_yaml)`` (in :mod:`.parser`) validates a definition and returns a
:class:`~cosmos.plato.language.model.Definition`; the engine only ever sees the compiled model.
"""
