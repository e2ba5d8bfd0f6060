"""The user-facing config model: what operators write, and the one path that validates it.

A tour, in the order data flows::

    YAML text --source--> documents --validate--> resources --checks--> ConfigSet
                                                                  |
                              serialize <-> YAML-shaped dicts (API, store)

- :mod:`~plait.model.resources` -- the resources (``Service``, ``Route``, ``Policy``) as frozen
  pydantic models. YAML spells fields in camelCase (``perTryTimeout``); durations are
  ``"250ms"``/``"5s"`` in YAML and float seconds in Python.
- :mod:`~plait.model.config` -- ``ConfigSet``: one whole, cross-checked config version.
- :mod:`~plait.model.load` -- **the front door**: ``parse_documents``, ``build_config``,
  ``apply_resources``/``apply_text`` (upsert, like ``kubectl apply``),
  ``delete_resource``, ``resource_to_dict``/``resource_from_dict``,
  ``config_to_documents``/``config_from_documents``, ``ConfigError``/``FieldError``.
  Import from here; the modules below are its parts.
- :mod:`~plait.model.yaml_dialect` -- the YAML we read: 1.2-style scalars, so an
  unquoted ``on:`` is a key and ``yes`` is a string.
- :mod:`~plait.model.source` -- YAML text to documents, keeping each node's line.
- :mod:`~plait.model.validate` -- one document to one resource, pydantic errors to words.
- :mod:`~plait.model.checks` -- rules across resources; build, apply and delete.
- :mod:`~plait.model.serialize` -- resources to and from YAML-shaped dicts.
- :mod:`~plait.model.errors` -- ``FieldError``/``ConfigError``: what, where, what to do.

Everything here is pure: no I/O, no clocks, no globals. Every failure is a
``ConfigError`` that lists *all* problems found, each with file, document, field
(as YAML spells it) and line -- and any input text either loads or raises ConfigError,
nothing else (a hypothesis property test holds us to it).
"""
