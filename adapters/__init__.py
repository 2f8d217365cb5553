"""Framework glue, installed as ``slift_plugin.adapters``.

The only modules of the project that import neuraloperator (:mod:`.neuralop`, with its
private helpers :mod:`.neuralop_config` and :mod:`._neuralop_arguments`) or torchsde
(:mod:`.torchsde`). Import them explicitly; importing this package imports neither.
"""

# No names of its own: the adapters are imported explicitly, as submodules.
__all__: list[str] = []
