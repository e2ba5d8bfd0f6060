"""plait: a service mesh in Python.

Packages: ``model`` (user resources and validation), ``xds`` (pure translation to xDS),
``control`` (the control plane), ``proxy`` (the data plane), ``cli`` (the ``plait``
command), ``demo`` (demo apps for ``plait up``). See docs/ for the contracts between them.
"""

__version__ = "0.1.0"
